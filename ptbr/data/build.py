"""``ptbr shards build``: corpus -> tokenized, packed MDS shards in DIR/train and DIR/val + manifest.

Pipeline: the main process reads documents and keeps a bounded number of batches in flight on a
pool of tokenizer processes (one per core); results come back in order, so the output
is byte-identical for any worker count. The main process splits, packs and writes shards with
MDSWriter (zstd, xxh64).

Commit protocol: shards are written to DIR/.ptbr-build, moved into place when complete, and
manifest.json is written last (atomically). A manifest whose ``build_key`` (inputs' content
hashes + tokenizer hash + settings) matches means "already built": the re-run is a no-op.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptbr import __version__
from ptbr.data import encode
from ptbr.data.corpus import InputFile, ReadStats, discover_inputs, iter_documents
from ptbr.data.hashing import sha256_file, sha256_json, xxh3_file
from ptbr.data.manifest import (
    COLUMN,
    FORMAT,
    FORMAT_VERSION,
    INDEX,
    MANIFEST,
    dataset_hash,
    encode_manifest,
    layout_of,
    parse_manifest,
    stored_file,
)
from ptbr.data.packing import Packer, choose_dtype
from ptbr.data.tokenizer import EOS_TOKEN, TokenizerInfo, load_tokenizer
from ptbr.errors import DataError
from ptbr.fsutil import atomic_write_bytes, fsync_dir
from ptbr.progress import ProgressBar

STAGING = ".ptbr-build"
TOKENIZER_COPY = "tokenizer.json"


@dataclass(frozen=True)
class BuildSettings:
    """Everything that changes the output (worker count does not, so it is not here)."""

    seq_len: int
    val_fraction: float = 0.005
    split_seed: int = 0
    text_field: str = "text"
    txt_docs: str = "file"
    shard_size: int = 64 << 20
    compression: str | None = "zstd"
    dtype: str = "auto"
    eos_token: str = EOS_TOKEN

    def check(self) -> None:
        if self.seq_len < 1:
            raise DataError(f"--seq-len must be positive, not {self.seq_len}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataError(f"--val-fraction must be in [0, 1), not {self.val_fraction}")
        if not 1 << 10 <= self.shard_size < 1 << 32:
            raise DataError("--shard-size must be between 1 KiB and 4 GiB (MDS offsets are uint32)")
        if self.split_seed < 0:
            raise DataError("--split-seed must be non-negative")


@dataclass
class BuildResult:
    output: Path
    manifest: dict[str, Any]
    up_to_date: bool


def parse_size(text: str | int) -> int:
    """'64mb', '512KiB', '1gb' or a byte count -> bytes (binary multiples, like streaming)."""
    if isinstance(text, int):
        return text
    s = text.strip().lower().replace("ib", "b")
    units = {"kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "b": 1}
    for suffix, mult in units.items():
        if s.endswith(suffix):
            try:
                return int(float(s[: -len(suffix)]) * mult)
            except ValueError:
                break
    try:
        return int(s)
    except ValueError:
        raise DataError(f"cannot parse size {text!r} (examples: 64mb, 512kb, 1048576)") from None


def build_key(settings: BuildSettings, tokenizer_sha: str, inputs: list[dict[str, Any]]) -> str:
    return sha256_json(
        {
            "format_version": FORMAT_VERSION,
            "tokenizer_sha256": tokenizer_sha,
            "settings": asdict(settings),
            "inputs": [[i["rel"], i["bytes"], i["xxh3_128"]] for i in inputs],
        }
    )


def describe_inputs(files: list[InputFile], progress: bool) -> list[dict[str, Any]]:
    total = sum(f.size for f in files)
    out = []
    with ProgressBar("hashing inputs", total, rate_unit="files", enabled=progress and total > 256 << 20) as bar:
        done = 0
        for f in files:
            out.append({"path": f.name, "rel": f.rel, "bytes": f.size, "xxh3_128": xxh3_file(f.path)})
            done += f.size
            bar.update(done, len(out))
    return out


def existing_state(output: Path, key: str) -> str:
    """'absent', 'empty', 'current' (same key, intact), 'damaged' (same key) or a reason it differs."""
    if not output.exists():
        return "absent"
    if not output.is_dir():
        raise DataError(f"--output {output} exists and is not a directory")
    entries = [p for p in output.iterdir() if p.name != STAGING]
    if not entries:
        return "empty"
    mpath = output / MANIFEST
    if not mpath.is_file():
        return f"it holds {len(entries)} entries but no {MANIFEST} (not a complete ptbr build)"
    try:
        manifest = parse_manifest(mpath.read_bytes(), str(output))
    except DataError as exc:
        return str(exc)
    if manifest.get("build_key") != key:
        return "it holds a dataset built from " + _difference(manifest)
    return "current" if _intact(output, manifest) else "damaged"


def _difference(manifest: dict[str, Any]) -> str:
    return (
        f"other inputs or settings (seq_len {manifest.get('seq_len')}, "
        f"{len(manifest.get('inputs', []))} input file(s), tokenizer "
        f"{manifest.get('tokenizer', {}).get('sha256', '?')[:12]})"
    )


def _intact(output: Path, manifest: dict[str, Any]) -> bool:
    for split, split_meta in manifest["splits"].items():
        index = output / split / INDEX
        if not index.is_file() or sha256_file(index) != split_meta.get("index_sha256"):
            return False
        for shard in json.loads(index.read_text())["shards"]:
            data = stored_file(shard)
            p = output / split / data["basename"]
            if not p.is_file() or p.stat().st_size != data["bytes"]:
                return False
    return True


class SplitWriter:
    """One split: a packer feeding an MDSWriter, plus document and token counts."""

    def __init__(self, name: str, directory: Path, sample_len: int, dtype: str, settings: BuildSettings):
        self.name, self.directory = name, directory
        self.packer = Packer(sample_len, dtype)
        self.documents = 0
        self.settings, self.dtype = settings, dtype
        self.writer: Any = None  # created with the first sample: importing streaming takes seconds

    def _open(self) -> Any:
        from streaming import MDSWriter

        return MDSWriter(
            columns={COLUMN: f"ndarray:{self.dtype}:{self.packer.sample_len}"},
            out=str(self.directory),
            compression=self.settings.compression,
            hashes=["xxh64"],
            size_limit=self.settings.shard_size,
        )

    def add(self, tokens: np.ndarray, documents: int) -> None:
        self.documents += documents
        samples = self.packer.add(tokens)
        if len(samples) and self.writer is None:
            self.writer = self._open()
        for row in samples:
            self.writer.write({COLUMN: row})

    def finish(self) -> dict[str, Any]:
        if self.writer is None:  # no complete sample (a small part of a corpus): an index without shards
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / INDEX).write_text(json.dumps({"version": 2, "shards": []}))
        else:
            self.writer.finish()
        index = self.directory / INDEX
        shards = json.loads(index.read_text())["shards"]
        for p in self.directory.iterdir():  # durable before manifest.json claims completeness
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(self.directory)
        samples = self.packer.samples_out
        return {
            "samples": samples,
            "tokens": samples * self.packer.sample_len,
            "documents": self.documents,
            "stream_tokens": self.packer.tokens_in,
            "dropped_tokens": self.packer.leftover,
            "shards": len(shards),
            "bytes": sum(stored_file(s)["bytes"] for s in shards),
            "index_sha256": sha256_file(index),
        }


def encoded_batches(batches: Iterable[list[str]], workers: int, init_args: tuple) -> Iterator[encode.EncodedBatch]:
    """Encode batches in order, with at most 2 batches per worker in flight (bounded memory)."""
    if workers <= 1:
        encode.init_worker(*init_args, single_thread=False)
        yield from map(encode.encode_batch, batches)
        return
    # spawn, not fork: forked workers inherit the parent's heap and were measured 25-40% slower
    # (copy-on-write faults, allocator state; worse after a large in-process job), and fork is unsafe
    # when threads exist. Spawn costs ~0.5 s of start-up and, as always with spawn, a calling
    # script needs an `if __name__ == "__main__":` guard (or workers=1 to stay in-process).
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, encode.init_worker, init_args) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.apply_async(encode.encode_batch, (batch,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def build_shards(
    inputs: list[str],
    tokenizer: str | Path,
    output: str | Path,
    settings: BuildSettings,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> BuildResult:
    """Build (or confirm up to date) the dataset in ``output``; see the module docstring."""
    settings.check()
    output = Path(output)
    tok, tok_meta = load_tokenizer(tokenizer, settings.eos_token)
    dtype = choose_dtype(tok_meta.vocab_size, settings.dtype)
    files = discover_inputs(inputs)
    described = describe_inputs(files, progress)
    key = build_key(settings, tok_meta.sha256, described)
    state = existing_state(output, key)
    if state == "current":
        manifest = parse_manifest((output / MANIFEST).read_bytes(), str(output))
        log(f"{output}: up to date (dataset {manifest['dataset_hash'][:16]}); nothing to do")
        return BuildResult(output, manifest, True)
    if state not in ("absent", "empty", "damaged") and not overwrite:
        raise DataError(
            f"--output {output} is not empty: {state}; pass --overwrite to replace it or choose another directory"
        )
    if state == "damaged":
        log(f"{output}: files of this build are missing or changed; rebuilding")

    staging = output / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        shutil.copyfile(tokenizer, staging / TOKENIZER_COPY)  # before anything in output is replaced
        if sha256_file(staging / TOKENIZER_COPY) != tok_meta.sha256:
            raise DataError(f"{tokenizer} changed while the build was starting; run it again")
        manifest = _run_build(
            files, described, tok, tok_meta, dtype, settings, staging, key, workers or default_workers(), progress
        )
        commit_build(output, staging, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BuildResult(output, manifest, False)


def encode_into_splits(
    docs: Iterable[str],
    stats: ReadStats,
    directory: Path,
    tok: Any,
    tok_meta: Any,
    dtype: str,
    settings: BuildSettings,
    workers: int,
    label: str,
    total_bytes: int,
    progress: bool,
) -> tuple[dict[str, SplitWriter], int]:
    """Tokenize ``docs`` with ``workers`` processes into ``directory/{train,val}`` (split by content hash, packed
    into samples of seq_len + 1 tokens): the one loop of a whole build and of a part. Returns the split
    writers, not yet finished, and the token count."""
    sample_len = settings.seq_len + 1
    splits = {"train": SplitWriter("train", directory / "train", sample_len, dtype, settings)}
    if settings.val_fraction > 0:
        splits["val"] = SplitWriter("val", directory / "val", sample_len, dtype, settings)
    init_args = (tok.to_str(), tok_meta.eos_id, dtype, encode.val_threshold(settings.val_fraction), settings.split_seed)
    total_tokens = 0
    bar = ProgressBar(label, total_bytes, rate_unit="tok", enabled=progress)
    for enc in encoded_batches(encode.batched(docs), workers, init_args):
        total_tokens += len(enc.tokens)
        if "val" in splits and enc.is_val.any():
            mask = np.repeat(enc.is_val, enc.doc_lens)
            splits["val"].add(enc.tokens[mask], int(enc.is_val.sum()))
            splits["train"].add(enc.tokens[~mask], int((~enc.is_val).sum()))
        else:
            splits["train"].add(enc.tokens, len(enc.doc_lens))
        bar.update(stats.bytes_read, total_tokens)
    bar.close()
    return splits, total_tokens


def _run_build(
    files: list[InputFile],
    described: list[dict[str, Any]],
    tok: Any,
    tok_meta: Any,
    dtype: str,
    settings: BuildSettings,
    staging: Path,
    key: str,
    workers: int,
    progress: bool,
) -> dict[str, Any]:
    stats = ReadStats()
    docs = iter_documents(files, stats, text_field=settings.text_field, txt_docs=settings.txt_docs)
    splits, total_tokens = encode_into_splits(
        docs,
        stats,
        staging,
        tok,
        tok_meta,
        dtype,
        settings,
        workers,
        "shards build",
        sum(f.size for f in files),
        progress,
    )
    _check_sizes(stats, splits, settings.seq_len + 1, len(files), settings)
    split_info = {name: w.finish() for name, w in splits.items()}
    inputs = [{k: v for k, v in d.items() if k != "rel"} for d in described]
    stats_dict = {**stats.to_dict(), "tokens": total_tokens}
    return build_manifest(tok_meta, dtype, settings, split_info, inputs, stats_dict, key)


def build_manifest(
    tok_meta: TokenizerInfo,
    dtype: str,
    settings: BuildSettings,
    split_info: dict[str, Any],
    inputs: list[dict[str, Any]],
    stats: dict[str, Any],
    key: str,
) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tool": {"name": "ptbr", "version": __version__},
        "vocab_size": tok_meta.vocab_size,
        "seq_len": settings.seq_len,
        "sample_len": settings.seq_len + 1,
        "eos_id": tok_meta.eos_id,
        "dtype": dtype,
        "column": COLUMN,
        "compression": settings.compression,
        "hashes": ["xxh64"],
        "shard_size_limit": settings.shard_size,
        "tokenizer": {**tok_meta.to_dict(), "file": TOKENIZER_COPY},
        "split": {"rule": encode.SPLIT_RULE, "val_fraction": settings.val_fraction, "seed": settings.split_seed},
        "reader": {"text_field": settings.text_field, "txt_docs": settings.txt_docs},
        "splits": split_info,
        "inputs": inputs,
        "stats": stats,
        "build_key": key,
    }
    manifest["dataset_hash"] = dataset_hash(layout_of(manifest), {k: v["index_sha256"] for k, v in split_info.items()})
    return manifest


def _check_sizes(
    stats: ReadStats, splits: dict[str, SplitWriter], sample_len: int, n_files: int, settings: BuildSettings
) -> None:
    if stats.documents == 0:
        raise DataError(
            f"empty corpus: no non-empty documents in {n_files} input file(s)"
            + (f" ({stats.bad_records} bad records skipped)" if stats.bad_records else "")
        )
    train = splits["train"].packer
    if train.samples_out == 0:
        raise DataError(
            f"corpus too small: {train.tokens_in} training tokens do not fill one sample of "
            f"seq_len+1 = {sample_len} tokens; add text or lower --seq-len"
        )
    if "val" in splits and splits["val"].packer.samples_out == 0:
        val = splits["val"]
        raise DataError(
            f"validation split is empty: {val.packer.tokens_in} tokens < one sample of {sample_len}; raise "
            f"--val-fraction (now {settings.val_fraction}), lower --seq-len, or pass --val-fraction 0"
        )


def commit_build(output: Path, staging: Path, manifest: dict[str, Any]) -> None:
    """Replace the previous build's entries (manifest first), move the new ones in, manifest last."""
    (output / MANIFEST).unlink(missing_ok=True)
    for name in ("train", "val"):
        shutil.rmtree(output / name, ignore_errors=True)
        if (staging / name).exists():
            os.replace(staging / name, output / name)
    os.replace(staging / TOKENIZER_COPY, output / TOKENIZER_COPY)
    fsync_dir(output)
    atomic_write_bytes(output / MANIFEST, encode_manifest(manifest))
