"""Datasets built through the real CLI for the data tests (module-level pytest fixtures, registered in
tests/conftest.py), and small helpers to read them back without mosaicml-streaming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ptbr.data.mds import decompress, read_samples
from ptbr.devtools.sample_text import portuguese_documents
from tests.helpers.data import (
    as_samples,
    assert_ok,
    assert_one_line_error,
    direct_tokens,
    run_cli,
    train_tokenizer,
    write_corpus,
)

SEQ_LEN = 32

VAL_FRACTION = 0.1

VOCAB = 400


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("corpus")
    return root, write_corpus(root)


@pytest.fixture(scope="session")
def tokenizer(corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    proc = run_cli("tokenizer", "train", "--input", str(corpus[0]), "--output", str(out), "--vocab-size", str(VOCAB))
    assert_ok(proc)
    assert "invalid UTF-8 sequences replaced: 4" in proc.stdout  # 2 files x b"\\xff\\xfe" = 4 U+FFFD
    assert "bad records skipped: 2" in proc.stdout
    return out


@pytest.fixture(scope="session")
def dataset(corpus, tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "dataset"
    proc = run_cli(
        "shards",
        "build",
        "--input",
        str(corpus[0]),
        "--tokenizer",
        str(tokenizer),
        "--output",
        str(out),
        "--seq-len",
        str(SEQ_LEN),
        "--val-fraction",
        str(VAL_FRACTION),
        "--shard-size",
        "8kb",
        "--workers",
        "2",
    )
    assert_ok(proc)
    return out


@pytest.fixture(scope="session")
def expected(corpus, tokenizer) -> dict[str, np.ndarray]:
    streams = direct_tokens(tokenizer, corpus[1], val_fraction=VAL_FRACTION, split_seed=0)
    return {k: as_samples(v, SEQ_LEN + 1) for k, v in streams.items()}


@pytest.fixture(scope="session")
def dataset_b(dataset, corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another dataset version: a copy of ``dataset`` rebuilt with --overwrite at seq_len 16."""
    out = tmp_path_factory.mktemp("dsb") / "dataset"
    shutil.copytree(dataset, out)
    args = [
        "shards",
        "build",
        "--input",
        str(corpus[0]),
        "--tokenizer",
        str(out / "tokenizer.json"),
        "--output",
        str(out),
        "--seq-len",
        "16",
        "--val-fraction",
        str(VAL_FRACTION),
        "--workers",
        "1",
        "--quiet",
    ]
    refused = run_cli(*args)
    assert_one_line_error(refused, "not empty", "--overwrite")
    assert_ok(run_cli(*args, "--overwrite"))
    return out


def local_samples(dataset: Path, split: str) -> np.ndarray:
    """All samples of a local split, read without mosaicml-streaming."""
    manifest = json.loads((dataset / "manifest.json").read_text())
    index = json.loads((dataset / split / "index.json").read_text())
    parts = []
    for shard in index["shards"]:
        data = (dataset / split / shard["zip_data"]["basename"]).read_bytes()
        parts.append(read_samples(decompress(data, shard["compression"]), manifest["sample_len"], manifest["dtype"]))
    return np.concatenate(parts).astype(np.int64)


NO_IMDS = {"AWS_EC2_METADATA_DISABLED": "true"}  # never let boto3 probe the instance-metadata address


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small corpus, its tokenizer, and a built dataset (all made through the CLI)."""
    root = tmp_path_factory.mktemp("errs")
    corpus = root / "corpus"
    corpus.mkdir()
    docs = portuguese_documents(60, seed=5, max_sentences=6)
    (corpus / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    train_tokenizer(str(corpus), str(root / "tok.json"), 300)
    assert_ok(
        run_cli(
            "shards",
            "build",
            "--input",
            str(corpus),
            "--tokenizer",
            str(root / "tok.json"),
            "--output",
            str(root / "ds"),
            "--seq-len",
            "16",
            "--val-fraction",
            "0",
            "--workers",
            "1",
            "--quiet",
        )
    )
    return {"root": root, "corpus": corpus, "tok": root / "tok.json", "ds": root / "ds"}


def build(small: dict[str, Path], corpus: Path, out: str, *extra: str):
    return run_cli(
        "shards",
        "build",
        "--input",
        str(corpus),
        "--tokenizer",
        str(small["tok"]),
        "--output",
        str(small["root"] / out),
        "--seq-len",
        "16",
        "--workers",
        "1",
        *extra,
    )
