"""Helpers for the data-pipeline tests (no tests here): corpora with known content, CLI runner.

The expected documents are derived from the bytes written, with Python's own UTF-8 decoding
(errors="replace"), not with ptbr's reader, so the end-to-end test checks the reader too.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xxhash
import zstandard

from ptbr.devtools.sample_text import portuguese_documents

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m ptbr.cli ARGS`` in a subprocess (environment = ours + ``env``)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ptbr.cli", *args],
        cwd=REPO,
        env=full_env,
        text=True,
        capture_output=True,
        timeout=timeout,
    )


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def train_tokenizer(corpus: str, output: str, vocab_size: int) -> None:
    """``ptbr tokenizer train`` through the CLI, quietly; it must succeed."""
    assert_ok(
        run_cli("tokenizer", "train", "--input", corpus, "--output", output, "--vocab-size", str(vocab_size), "--quiet")
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Non-zero exit, exactly one non-empty stderr line 'ptbr: error: ...', no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, f"expected failure, got exit 0\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(lines) == 1, f"expected one stderr line, got:\n{proc.stderr}"
    assert lines[0].startswith("ptbr: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def s3_env(server) -> dict[str, str]:
    return server.env()


INVALID = b"\xff\xfe"  # never valid UTF-8


def write_corpus(root: Path, *, n_docs: int = 240, seed: int = 7) -> list[str]:
    """A mixed corpus in ``root``; returns the documents in the order ptbr reads them.

    Files (read in sorted order): a.txt (one document, NFD accents), b.jsonl.gz (documents, one with
    invalid bytes inside the JSON string, one whitespace-only, one non-JSON line, one record
    without "text"), c.txt.zst (one document with invalid bytes), d/e.jsonl (the rest).
    """
    docs = portuguese_documents(n_docs, seed=seed, max_sentences=12)
    root.mkdir(parents=True, exist_ok=True)
    expected: list[str] = []

    a = "Ação e educação em São Paulo: cafe\u0301, ma\u0303e, coração.\n" + docs[0]
    (root / "a.txt").write_text(a, encoding="utf-8")
    expected.append(a)

    half = n_docs // 2
    lines = []
    for i, d in enumerate(docs[1:half]):
        if i == 3:
            raw = json.dumps({"text": d + " FIM"}, ensure_ascii=False).encode()
            raw = raw.replace(b" FIM", b" " + INVALID + b"FIM")
            lines.append(raw)
            expected.append(d + " " + INVALID.decode("utf-8", "replace") + "FIM")
            continue
        if i == 5:
            lines.append(json.dumps({"text": "   \n  "}).encode())
            lines.append(b"this line is not json")
            lines.append(json.dumps({"title": "no text field"}).encode())
        lines.append(json.dumps({"text": d, "id": i}, ensure_ascii=False).encode())
        expected.append(d)
    with gzip.open(root / "b.jsonl.gz", "wb") as f:
        f.write(b"\n".join(lines) + b"\n")

    c_bytes = docs[half].encode() + b" " + INVALID + b" fim."
    (root / "c.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(c_bytes))
    expected.append(c_bytes.decode("utf-8", "replace"))

    (root / "d").mkdir(exist_ok=True)
    with open(root / "d" / "e.jsonl", "w", encoding="utf-8") as f:
        for d in docs[half + 1 :]:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
            expected.append(d)
    return expected


def direct_tokens(
    tokenizer_path: Path, docs: list[str], *, val_fraction: float, split_seed: int, eos_token: str = "<|endoftext|>"
) -> dict[str, np.ndarray]:
    """The token stream of each split by plain ``Tokenizer.encode`` (the documented split rule)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    eos = tok.token_to_id(eos_token)
    threshold = int(val_fraction * 2.0**64)
    streams: dict[str, list[int]] = {"train": [], "val": []}
    for d in docs:
        split = "val" if xxhash.xxh64_intdigest(d.encode("utf-8"), split_seed) < threshold else "train"
        streams[split].extend(tok.encode(d, add_special_tokens=False).ids)
        streams[split].append(eos)
    return {k: np.array(v, dtype=np.int64) for k, v in streams.items()}


def as_samples(stream: np.ndarray, sample_len: int) -> np.ndarray:
    n = len(stream) // sample_len
    return stream[: n * sample_len].reshape(n, sample_len)


@contextlib.contextmanager
def isolated_environ() -> Iterator[None]:
    """Undo prepare_streaming_env's process-wide changes (environment, tempfile.tempdir)."""
    saved_env = dict(os.environ)
    saved_tmp = tempfile.tempdir
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        tempfile.tempdir = saved_tmp


def gpt2_byte_table() -> dict[int, str]:
    """GPT-2's byte -> printable character table (``bytes_to_unicode``), which byte-level BPE writes tokens in;
    written out here, independently of ``tokenizers``, to recover the bytes a token stands for."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table
