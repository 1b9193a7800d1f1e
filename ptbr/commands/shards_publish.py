"""``ptbr shards publish LOCAL_DIR s3://bucket/prefix``: verified upload, then the _SUCCESS commit."""

from __future__ import annotations

import argparse
import json
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("local", metavar="LOCAL_DIR", help="output of 'ptbr shards build'")
    parser.add_argument("url", metavar="S3_URL", help="s3://bucket/prefix (endpoint from S3_ENDPOINT_URL)")
    parser.add_argument("--jobs", type=int, default=8, help="parallel uploads (objects and parts)")
    parser.add_argument("--part-size", default="16mb", help="multipart threshold and part size")
    parser.add_argument(
        "--force", action="store_true", help="replace whatever the prefix holds (another dataset or other objects)"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    from ptbr.data.build import parse_size
    from ptbr.data.publish import publish
    from ptbr.progress import human_bytes

    r = publish(
        args.local,
        args.url,
        force=args.force,
        jobs=args.jobs,
        part_size=parse_size(args.part_size),
        progress=not args.quiet,
        log=lambda m: print(m, file=sys.stderr),
    )
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
        return 0
    rate = r.bytes_uploaded / r.upload_seconds if r.upload_seconds > 0 else 0.0
    print(
        f"published {r.url}: {r.objects} objects, {human_bytes(r.bytes_total)}; uploaded {r.uploaded} "
        f"({human_bytes(r.bytes_uploaded)} at {human_bytes(rate)}/s), skipped {r.skipped} already present"
        + (f", deleted {r.deleted}" if r.deleted else "")
    )
    print(
        f"committed _SUCCESS = sha256(manifest.json) {r.manifest_sha256[:16]}, dataset {r.dataset_hash[:16]}, "
        f"{r.seconds:.1f} s"
    )
    return 0
