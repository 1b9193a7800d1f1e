"""Reading MDS shards without mosaicml-streaming (whose import takes seconds): for verification.

Joint MDS shard layout: uint32 sample count n, uint32 offsets[n + 1] (absolute byte positions),
the writer's JSON config, then the samples. Our single column has a static size, so every sample
is exactly sample_len tokens with no per-sample header.
"""

from __future__ import annotations

import numpy as np

from ptbr.errors import DataError


def decompress(data: bytes, compression: str | None) -> bytes:
    if not compression:
        return data
    algo = compression.split(":")[0]
    if algo != "zstd":
        raise DataError(f"shard compression {compression!r} is not supported by ptbr verify")
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def read_samples(raw: bytes, sample_len: int, dtype: str) -> np.ndarray:
    """Samples of a joint MDS shard as an (n, sample_len) array; ValueError when malformed."""
    if len(raw) < 8:
        raise ValueError("shorter than an MDS header")
    n = int(np.frombuffer(raw, np.uint32, 1, 0)[0])
    offsets = np.frombuffer(raw, np.uint32, n + 1, 4).astype(np.int64)
    width = sample_len * np.dtype(dtype).itemsize
    if n and (np.any(np.diff(offsets) != width) or offsets[-1] > len(raw)):
        raise ValueError("sample offsets do not match the declared sample size")
    if offsets[-1] != len(raw):
        raise ValueError(f"{len(raw) - int(offsets[-1])} trailing bytes after the last sample")
    return np.frombuffer(raw, dtype, n * sample_len, int(offsets[0])).reshape(n, sample_len)
