#!/usr/bin/env bash
# Build the wheelhouse for an air-gapped GPU node, where there is network (tools/wheelhouse.py does the work).
# Usage: bash tools/wheelhouse.sh --out DIR [--python-version 3.12] [--have node-freeze.txt] [--glibc 2.28]
#   node-freeze.txt: `python3 -m pip list --format=freeze` run on the node (default: tools/node_packages.txt,
#   the node of issue 21). Then, on the node: bash benchmarks/gpu_check.sh --wheelhouse DIR --out OUT
#   (or only the install: bash tools/setup_env.sh --wheelhouse DIR).
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/wheelhouse.py" "$@"
