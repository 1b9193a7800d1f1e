#!/usr/bin/env bash
# One GPU check: CUDA tests, the WKV6 suite against flash-linear-attention, single-GPU training throughput
# and MFU of the 140m and 1b5 presets, generation speed, long-context segments, CPU prefill/generation vs the rwkv
# runtime at every core. One JSON (gpu_check/gpu_check.json), one table.
# Under 8 minutes on an H100-class card (plus the first install).
#
# Usage: bash benchmarks/gpu_check.sh [--out DIR]      on a machine with one NVIDIA GPU
#        bash benchmarks/gpu_check.sh --dry            the same steps at toy sizes on CPU (tests the plumbing)
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup_env.sh   # the same environment set-up as the tests
exec "$VENV/bin/python" benchmarks/gpu_check.py "$@"
