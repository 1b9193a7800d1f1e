#!/usr/bin/env python3
"""Thin wrapper: ``python tools/publish_shards.py LOCAL_DIR s3://bucket/prefix`` = ``ptbr shards publish``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ptbr.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["shards", "publish", *sys.argv[1:]]))
