#!/usr/bin/env bash
# Set up the virtual environment (idempotent) and run the linter and the whole test suite.
# Usage: bash tools/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup_env.sh
"$VENV/bin/ruff" check .
exec "$VENV/bin/python" -m pytest "$@"
