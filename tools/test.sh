#!/usr/bin/env bash
# Set up the virtual environment (idempotent) and run the linter and the whole test suite.
# Usage: bash tools/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup_env.sh
# The Slurm tests start a real slurmctld/slurmd (Debian's slurm-wlm); without root they are skipped.
if ! command -v slurmctld >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing slurm-wlm for the Slurm tests" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm; } >/dev/null 2>&1 \
        || echo "setup: could not install slurm-wlm; the Slurm tests will be skipped" >&2
fi
"$VENV/bin/ruff" format --check .   # the formatter is the house style (docs/architecture.md, "Habits")
"$VENV/bin/ruff" check .
# Two test files at a time (pytest-xdist, one file per worker so that module fixtures are built once): most
# tests wait on subprocesses, and one file at a time leaves a core idle half the time. PTBR_TEST_WORKERS=1
# runs them one by one (e.g. to read a failure's output in order).
workers="${PTBR_TEST_WORKERS:-2}"
xdist=()
if [ "$workers" -gt 1 ]; then
    xdist=(-n "$workers" --dist loadfile)
fi
exec "$VENV/bin/python" -m pytest ${xdist[@]+"${xdist[@]}"} "$@"
