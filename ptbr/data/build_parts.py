"""``ptbr shards build --part I/N`` and ``--merge N``: one dataset built by N machines.

A part tokenizes its share of the inputs (``ptbr.data.parts``: contiguous runs of files or parquet row
groups) exactly as a one-machine build does (same workers, content-hash split, packing into samples of
seq_len + 1 tokens) into ``WORK/part-I-of-N/{train,val}/``, and keeps the tokens left over after its last
full sample (< seq_len + 1 per split) in ``tail-<split>.bin``.

The merge checks that every part is there, finished, of this plan and of this tokenizer, then lays out
``OUTPUT/<split>/part-IIIII/...`` (the parts' shards, hard-linked: no copy) plus ``OUTPUT/<split>/tail/``
(the parts' tails joined in part order and packed), one ``index.json`` per split listing them all (what
streaming's ``merge_index`` writes: shard basenames prefixed by their sub-directory), and one
``manifest.json`` with the same guarantees as a one-machine build, committed the same way.

What differs from a one-machine build, and by how much: the documents, their tokens, the split and the
number of samples are the same (sum of floor(t_i / L) + floor(sum of r_i / L) = floor(sum of t_i / L) for
part streams of t_i = L * q_i + r_i tokens). The samples are cut differently: each part's samples start at
its own first token, and each part's tail (< L tokens per split) moves from between its part and the next
to the tail samples at the end. So at most N - 1 documents per split are cut at one more place than a
one-machine build cuts them, and the final dropped remainder (< L tokens) may be other tokens.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ptbr.data.build import (
    STAGING,
    TOKENIZER_COPY,
    BuildResult,
    BuildSettings,
    SplitWriter,
    build_key,
    build_manifest,
    commit_build,
    default_workers,
    describe_inputs,
    encode_into_splits,
    existing_state,
)
from ptbr.data.corpus import InputFile, ReadStats, Unit, discover_inputs, iter_units, units_of
from ptbr.data.hashing import sha256_file, sha256_json
from ptbr.data.manifest import FORMAT_VERSION, INDEX, MANIFEST, parse_manifest, stored_file
from ptbr.data.packing import choose_dtype
from ptbr.data.parts import PartSpec, assign, check_parts, finish_part, part_is_done, start_part
from ptbr.data.tokenizer import TokenizerInfo, load_tokenizer
from ptbr.errors import DataError

TAIL = "tail"


def _plan(
    inputs: list[str], tokenizer: str | Path, settings: BuildSettings, count: int
) -> tuple[Any, TokenizerInfo, str, list[InputFile], list[Unit], str]:
    settings.check()
    tok, tok_meta = load_tokenizer(tokenizer, settings.eos_token)
    dtype = choose_dtype(tok_meta.vocab_size, settings.dtype)
    files = discover_inputs(inputs)
    units = units_of(files, settings.text_field)
    plan = sha256_json(
        {
            "format_version": FORMAT_VERSION,
            "tokenizer_sha256": tok_meta.sha256,
            "parts": count,
            "settings": asdict(settings),
            "files": [[f.rel, f.size] for f in files],
            "units": [[u.file.rel, u.row_group, u.size] for u in units],
        }
    )
    return tok, tok_meta, dtype, files, units, plan


def build_part(
    inputs: list[str],
    tokenizer: str | Path,
    work: Path,
    settings: BuildSettings,
    spec: PartSpec,
    *,
    workers: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Tokenize part ``spec`` into ``work``; its DONE record (at once when it is done already)."""
    tok, tok_meta, dtype, files, units, plan = _plan(inputs, tokenizer, settings, spec.count)
    directory = work / spec.dirname()
    label = f"shards part {spec}"
    done = part_is_done(directory, plan)
    if done is not None:
        log(f"{label}: done already ({done['stats']['documents']:,} documents); nothing to do")
        return done
    start_part(directory)
    mine = [u for u, p in zip(units, assign([u.size for u in units], spec.count)) if p == spec.index]
    my_files = list({u.file.path: u.file for u in mine}.values())
    total = sum(u.size for u in mine)
    log(
        f"{label}: {len(mine)} of {len(units)} unit(s), {total / 1e6:,.1f} MB, {workers or default_workers()} worker(s)"
    )
    described = describe_inputs(my_files, progress)
    stats = ReadStats()
    docs = (text for _, text in iter_units(mine, stats, text_field=settings.text_field, txt_docs=settings.txt_docs))
    splits, total_tokens = encode_into_splits(
        docs, stats, directory, tok, tok_meta, dtype, settings, workers or default_workers(), label, total, progress
    )
    split_info = {}
    for name, w in splits.items():
        w.packer.leftover_tokens().tofile(directory / f"{TAIL}-{name}.bin")
        split_info[name] = w.finish()
    record = finish_part(
        directory,
        plan,
        spec,
        {
            "tokenizer_sha256": tok_meta.sha256,
            "tokenizer": str(tokenizer),
            "splits": split_info,
            "inputs": described,
            "stats": {**stats.to_dict(), "bytes_read": stats.bytes_read, "tokens": total_tokens},
        },
    )
    log(
        f"{label}: done: {stats.documents:,} documents, {total_tokens:,} tokens, "
        + ", ".join(f"{n} {s['samples']:,} samples" for n, s in split_info.items())
    )
    return record


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system: copy
        shutil.copyfile(src, dst)


def _prefixed(shard: dict[str, Any], prefix: str) -> dict[str, Any]:
    shard = json.loads(json.dumps(shard))
    for key in ("raw_data", "zip_data", "raw_meta", "zip_meta"):
        if shard.get(key):
            shard[key]["basename"] = f"{prefix}/{shard[key]['basename']}"
    return shard


def _tokenizer_mismatch(tok_meta: TokenizerInfo, tokenizer: str | Path) -> Callable[[dict[str, Any]], str | None]:
    def explain(record: dict[str, Any]) -> str | None:
        theirs = record.get("tokenizer_sha256")
        if theirs and theirs != tok_meta.sha256:
            return (
                f"was built with another tokenizer ({record.get('tokenizer', '?')}, sha256 {theirs[:12]}), "
                f"not {tokenizer} ({tok_meta.sha256[:12]})"
            )
        return None

    return explain


def _merge_split(
    name: str,
    parts: list[Path],
    records: list[dict[str, Any]],
    staging: Path,
    sample_len: int,
    dtype: str,
    settings: BuildSettings,
) -> dict[str, Any]:
    """Lay out one split in ``staging`` (see the module docstring); its manifest entry."""
    out = staging / name
    shards: list[dict[str, Any]] = []
    documents = stream_tokens = samples = 0
    for part, record in zip(parts, records):
        info = record["splits"][name]
        documents += info["documents"]
        stream_tokens += info["stream_tokens"]
        samples += info["samples"]
        prefix = part.name.split("-of-")[0]
        for shard in json.loads((part / name / INDEX).read_text())["shards"]:
            for key in ("raw_data", "zip_data"):
                if shard.get(key) and (part / name / shard[key]["basename"]).is_file():
                    _link(part / name / shard[key]["basename"], out / prefix / shard[key]["basename"])
            shards.append(_prefixed(shard, prefix))
    tails = SplitWriter(name, out / TAIL, sample_len, dtype, settings)
    for part in parts:
        tails.add(np.fromfile(part / f"{TAIL}-{name}.bin", dtype=dtype), 0)
    tail_info = tails.finish()
    shards += [_prefixed(s, TAIL) for s in json.loads((out / TAIL / INDEX).read_text())["shards"]]
    (out / TAIL / INDEX).unlink()
    samples += tail_info["samples"]
    index = out / INDEX
    index.write_text(json.dumps({"shards": shards, "version": 2}, sort_keys=True))
    for f in (index, *(p for p in out.rglob("*") if p.is_file())):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    return {
        "samples": samples,
        "tokens": samples * sample_len,
        "documents": documents,
        "stream_tokens": stream_tokens,
        "dropped_tokens": tail_info["dropped_tokens"],
        "shards": len(shards),
        "bytes": sum(stored_file(s)["bytes"] for s in shards),
        "index_sha256": sha256_file(index),
        "parts": len(parts),
    }


def _merged_inputs(files: list[InputFile], records: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every input file described once, in input order (a file split over parts is hashed by each; they agree)."""
    by_path: dict[str, dict[str, Any]] = {}
    for record in records:
        for d in record["inputs"]:
            seen = by_path.setdefault(d["path"], d)
            if seen["xxh3_128"] != d["xxh3_128"]:
                raise DataError(
                    f"{d['path']} changed while the parts were built (two parts read different "
                    "contents); run every part again"
                )
    for f in files:
        yield by_path.get(f.name) or describe_inputs([f], False)[0]


def merge_shards(
    inputs: list[str],
    tokenizer: str | Path,
    output: str | Path,
    settings: BuildSettings,
    count: int,
    *,
    work: Path,
    overwrite: bool = False,
    rerun: str = "ptbr shards build ...",
    log: Callable[[str], None] = print,
) -> BuildResult:
    """Join the ``count`` parts in ``work`` into the dataset ``output`` (see the module docstring)."""
    _, tok_meta, dtype, files, units, plan = _plan(inputs, tokenizer, settings, count)
    output = Path(output)
    records = check_parts(work, count, plan, rerun, mismatch=_tokenizer_mismatch(tok_meta, tokenizer))
    described = list(_merged_inputs(files, records))
    key = sha256_json({"build_key": build_key(settings, tok_meta.sha256, described), "parts": count})
    state = existing_state(output, key)
    if state == "current":
        manifest = parse_manifest((output / MANIFEST).read_bytes(), str(output))
        log(f"{output}: up to date (dataset {manifest['dataset_hash'][:16]}); nothing to do")
        return BuildResult(output, manifest, True)
    if state not in ("absent", "empty", "damaged") and not overwrite:
        raise DataError(
            f"--output {output} is not empty: {state}; pass --overwrite to replace it or choose another directory"
        )
    for r in records:
        log(
            f"shards part {r['part']}/{count}: {r['stats']['documents']:,} documents, {r['stats']['tokens']:,} tokens, "
            + ", ".join(
                f"{n} {s['samples']:,} samples + {s['stream_tokens'] - s['tokens']:,} tail tokens"
                for n, s in r["splits"].items()
            )
        )
    stats: dict[str, Any] = {}
    for record in records:
        for k, v in record["stats"].items():
            stats[k] = stats.get(k, 0) + v
    stats.pop("bytes_read", None)
    stats["files"] = len(files)
    if stats.get("documents", 0) == 0:
        raise DataError(f"empty corpus: no non-empty documents in {len(files)} input file(s)")
    parts = [work / PartSpec(i, count).dirname() for i in range(count)]
    sample_len = settings.seq_len + 1
    staging = output / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        shutil.copyfile(tokenizer, staging / TOKENIZER_COPY)
        if sha256_file(staging / TOKENIZER_COPY) != tok_meta.sha256:
            raise DataError(f"{tokenizer} changed while the merge was starting; run it again")
        split_info = {
            name: _merge_split(name, parts, records, staging, sample_len, dtype, settings)
            for name in records[0]["splits"]
        }
        _check_merged(split_info, sample_len, settings)
        inputs_meta = [{k: v for k, v in d.items() if k != "rel"} for d in described]
        manifest = build_manifest(tok_meta, dtype, settings, split_info, inputs_meta, stats, key)
        manifest["parts"] = count
        commit_build(output, staging, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BuildResult(output, manifest, False)


def _check_merged(split_info: dict[str, Any], sample_len: int, settings: BuildSettings) -> None:
    train = split_info["train"]
    if train["samples"] == 0:
        raise DataError(
            f"corpus too small: {train['stream_tokens']} training tokens do not fill one sample of "
            f"seq_len+1 = {sample_len} tokens; add text or lower --seq-len"
        )
    val = split_info.get("val")
    if val is not None and val["samples"] == 0:
        raise DataError(
            f"validation split is empty: {val['stream_tokens']} tokens < one sample of {sample_len}; raise "
            f"--val-fraction (now {settings.val_fraction}), lower --seq-len, or pass --val-fraction 0"
        )
