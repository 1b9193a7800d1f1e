#!/usr/bin/env bash
# The whole pipeline on this machine, CPU only, about 6.5 minutes on 2 cores (plus the first install):
# Brazilian Portuguese text from Debian packages -> tokenizer -> MDS shards -> local S3 server ->
# 2-rank ZeRO-2 training streaming from S3 -> export -> generate -> eval -> loss plot.
#
# Usage: bash launch/quickstart.sh [--work DIR] [--corpus DIR] [key=value ...]   (ptbr quickstart --help)
# A second run reuses what is done (corpus, tokenizer, shards; training resumes; the export is kept).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup_env.sh   # the same environment set-up as the tests (tools/test.sh)
exec "$VENV/bin/python" -m ptbr.cli quickstart "$@"
