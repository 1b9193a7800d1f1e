"""The real S3 server of the test session, and a small published dataset on it built with the real CLI
(corpus -> tokenizer -> shards -> publish), shared by the training and checkpoint tests (session scope)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ptbr.devtools.sample_text import portuguese_documents
from tests.helpers.train_harness import REPO, run_env

VOCAB = 512  # the tiny model's vocabulary (configs/model/tiny.yaml)
SEQ_LEN = 32


@dataclass
class PublishedDataset:
    url: str  # s3://bucket/prefix
    env: dict[str, str]  # S3 endpoint and credentials for the training processes
    local: Path  # the shard directory that was published
    manifest: dict
    tokenizer: Path


def ptbr(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "ptbr.cli", *args], env=env, capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0, f"ptbr {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


def build_and_publish(
    tmp: Path,
    s3_server,
    bucket: str,
    *,
    docs: int,
    seq_len: int,
    vocab: int,
    val_fraction: float,
    build_args: tuple[str, ...] = (),
) -> PublishedDataset:
    corpus = tmp / "corpus"
    corpus.mkdir(parents=True)
    with open(corpus / "docs.jsonl", "w", encoding="utf-8") as f:
        for text in portuguese_documents(docs, seed=7):
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    env = run_env(s3_server.env())
    tok = tmp / "tokenizer.json"
    ptbr("tokenizer", "train", "--input", str(corpus), "--output", str(tok), "--vocab-size", str(vocab), env=env)
    shards = tmp / "shards"
    ptbr(
        "shards",
        "build",
        "--input",
        str(corpus),
        "--tokenizer",
        str(tok),
        "--output",
        str(shards),
        "--seq-len",
        str(seq_len),
        "--val-fraction",
        str(val_fraction),
        *build_args,
        env=env,
    )
    s3_server.create_bucket(bucket)
    url = f"s3://{bucket}/tiny"
    ptbr("shards", "publish", str(shards), url, env=env)
    manifest = json.loads((shards / "manifest.json").read_text())
    return PublishedDataset(url, env, shards, manifest, tok)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real SeaweedFS S3 server on 127.0.0.1 (ptbr.devtools.local_s3), shared by the session, killed at the end."""
    from ptbr.devtools.local_s3 import LocalS3Server

    server = LocalS3Server(tmp_path_factory.mktemp("s3server")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_dataset(s3_server, tmp_path_factory: pytest.TempPathFactory) -> PublishedDataset:
    """~600 training sequences of 33 tokens, vocab 512, on s3://train-data/tiny."""
    return build_and_publish(
        tmp_path_factory.mktemp("tiny_dataset"),
        s3_server,
        "train-data",
        docs=400,
        seq_len=SEQ_LEN,
        vocab=VOCAB,
        val_fraction=0.05,
    )
