#!/usr/bin/env python3
"""Run the local SeaweedFS S3 server (ptbr.devtools.local_s3.LocalS3Server) for the quickstart and tests.

python tools/s3_server.py start --dir /tmp/ptbr-s3 --bucket ptbr           # foreground, Ctrl-C stops
python tools/s3_server.py start --dir /tmp/ptbr-s3 --bucket ptbr --background
source /tmp/ptbr-s3/s3.env                                                  # client variables
python tools/s3_server.py stop --dir /tmp/ptbr-s3
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ptbr.devtools.local_s3 import LocalS3Server, stop_saved  # noqa: E402
from ptbr.errors import PtbrError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    start = sub.add_parser("start", help="start a server (foreground unless --background)")
    start.add_argument("--dir", required=True, help="data directory (created; holds data, logs, state)")
    start.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    start.add_argument("--background", action="store_true", help="detach; stop later with 'stop --dir'")
    stop = sub.add_parser("stop", help="stop a server started with --background")
    stop.add_argument("--dir", required=True)
    stop.add_argument("--graceful", action="store_true", help="SIGTERM and wait (~17 s) instead of SIGKILL")
    args = parser.parse_args(argv)
    try:
        if args.action == "stop":
            print("stopped" if stop_saved(args.dir, graceful=args.graceful) else "no server was running")
            return 0
        server = LocalS3Server(args.dir).start()
        for bucket in args.bucket:
            server.create_bucket(bucket)
        server.save_state()
        print(f"S3 endpoint {server.endpoint_url} (pid {server.pid}); access key {server.access_key}")
        print(f"client environment: source {server.env_path}")
        if args.background:
            return 0
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while server.is_running():
                time.sleep(0.5)
            print(f"weed exited; see {server.log_path}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            stop_saved(args.dir)
    except PtbrError as exc:
        print(f"s3_server: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
