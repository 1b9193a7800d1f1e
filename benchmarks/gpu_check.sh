#!/usr/bin/env bash
# One GPU check: CUDA tests, the WKV6 suite against flash-linear-attention, single-GPU training throughput
# and MFU of the 140m and 1b5 presets, generation speed, long-context segments, CPU prefill/generation vs the rwkv
# runtime at every core. One JSON (OUT/gpu_check.json), one table (OUT/gpu_check.md), both rewritten after every
# step; each step under its own time limit, the whole under 8 minutes on an H100-class card, the install included.
#
# Usage: bash benchmarks/gpu_check.sh --wheelhouse DIR [--out OUT]   air-gapped node: installs ptbr and the
#            wheelhouse (tools/wheelhouse.sh) into $PYTHON (default python3) itself, no network, then checks
#        bash benchmarks/gpu_check.sh [--out OUT]      a GPU machine with network (venv: tools/setup_env.sh)
#        bash benchmarks/gpu_check.sh --dry            the same steps at toy sizes on CPU (tests the plumbing)
set -euo pipefail
cd "$(dirname "$0")/.."
wheelhouse=""
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --wheelhouse) wheelhouse=${2:?"--wheelhouse needs a directory"}; shift 2 ;;
        --wheelhouse=*) wheelhouse=${1#--wheelhouse=}; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
if [ -n "$wheelhouse" ]; then
    # The node's own Python; gpu_check.py runs the install as its first, timed step.
    exec "${PYTHON:-python3}" benchmarks/gpu_check.py --wheelhouse "$wheelhouse" "${args[@]}"
fi
start=$SECONDS
set --   # setup_env.sh is sourced: it must not see this script's arguments
source tools/setup_env.sh   # the same environment set-up as the tests
exec "$VENV/bin/python" benchmarks/gpu_check.py --install-seconds $((SECONDS - start)) "${args[@]}"
