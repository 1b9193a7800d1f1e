#!/usr/bin/env python3
"""Write a DeepSpeed hostfile for the current Slurm allocation, or for a list of hosts (thin wrapper over
ptbr.dist).

    python launch/hostfile_from_slurm.py --out hostfile [--slots 8]            # inside an allocation
    python launch/hostfile_from_slurm.py --out hostfile --hosts gpu[01-04]     # any hosts (Slurm syntax)
    deepspeed --hostfile hostfile --module ptbr.train --config configs/train/1b5.yaml
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ptbr.dist import deepspeed_hostfile  # noqa: E402
from ptbr.errors import PtbrError  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--out", required=True, help="hostfile to write")
    ap.add_argument(
        "--nodelist",
        "--hosts",
        dest="nodelist",
        default=os.environ.get("SLURM_JOB_NODELIST"),
        help="hosts, comma-separated or in Slurm's gpu[01-04] form (default: $SLURM_JOB_NODELIST)",
    )
    ap.add_argument(
        "--slots",
        type=int,
        default=int(os.environ.get("SLURM_GPUS_ON_NODE", "8") or 8),
        help="GPUs per node (default: $SLURM_GPUS_ON_NODE or 8)",
    )
    args = ap.parse_args()
    try:
        if not args.nodelist:
            raise PtbrError("no hosts: run inside a Slurm allocation or pass --hosts h1,h2")
        Path(args.out).write_text(deepspeed_hostfile(args.nodelist, args.slots))
    except PtbrError as exc:
        print(f"hostfile_from_slurm: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
