#!/usr/bin/env python3
"""Thin wrapper: ``python tools/export_checkpoint.py CKPT OUT_DIR [...]`` = ``ptbr export CKPT OUT_DIR [...]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ptbr.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
