"""Run under torchrun (gloo ranks): build a TokenDataset over a shard directory the moment a start file
appears, so that several jobs on one node register streaming's shared memory at the same time, and read
one sample. Each rank writes the shared-memory prefix its dataset registered to OUT_DIR/<rank>; any
failure ends the job with streaming's error. The dataset is held until every rank of the jobs
started beside it (sibling directories OUT_DIR/../job*) has written its prefix.

argv: DATASET_DIR CACHE_ROOT READY_DIR START_FILE OUT_DIR
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch.distributed as dist

from ptbr.data import build_dataset, prepare_streaming_env


def main() -> None:
    dataset, cache_root, ready_dir, start_file, out_dir = sys.argv[1:6]
    dist.init_process_group("gloo")
    prepare_streaming_env()
    Path(ready_dir, f"{os.getpid()}").touch()
    while not os.path.exists(start_file):
        time.sleep(0.002)
    ds = build_dataset(dataset, "train", cache_root=cache_root, batch_size=2, shuffle=False, seed=0)
    assert int(ds[dist.get_rank()]["sample_id"]) == dist.get_rank()
    Path(out_dir, str(dist.get_rank())).write_text(str(ds._shm_prefix_int))
    deadline = time.monotonic() + 120  # hold the dataset until every rank of every job has registered
    while len(list(Path(out_dir).parent.glob("job*/[0-9]"))) < 2 * dist.get_world_size():
        assert time.monotonic() < deadline, "the other job never registered its dataset"
        time.sleep(0.01)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
