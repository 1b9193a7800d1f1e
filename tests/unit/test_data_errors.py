"""User errors of the data commands: one line 'ptbr: error: ...', exit code != 0, no traceback."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ptbr.devtools.sample_text import portuguese_documents
from tests.helpers.data import assert_ok, assert_one_line_error, run_cli
from tests.helpers.data_fixtures import build


def test_empty_corpus(small, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    with gzip.open(empty / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "  "}) + "\n")
    assert_one_line_error(build(small, empty, "out-empty"), "empty corpus")
    assert_one_line_error(
        run_cli(
            "tokenizer", "train", "--input", str(empty), "--output", str(tmp_path / "t.json"), "--vocab-size", "300"
        ),
        "no documents",
    )
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    assert_one_line_error(build(small, nothing, "out-nothing"), "no corpus files")


def test_corpus_smaller_than_one_sample(small, tmp_path: Path) -> None:
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    (tiny / "a.txt").write_text("Olá, mundo.")
    assert_one_line_error(build(small, tiny, "out-tiny", "--val-fraction", "0"), "corpus too small", "--seq-len")
    assert not (small["root"] / "out-tiny" / "manifest.json").exists()


@pytest.mark.slow  # several seconds of its own: in tests/unit, out of -m "not slow"
def test_empty_validation_split(small) -> None:
    assert_one_line_error(
        build(small, small["corpus"], "out-val", "--val-fraction", "0.0001"),
        "validation split is empty",
        "--val-fraction",
    )


def test_missing_or_invalid_tokenizer_and_inputs(small, tmp_path: Path) -> None:
    proc = run_cli(
        "shards",
        "build",
        "--input",
        str(small["corpus"]),
        "--tokenizer",
        str(tmp_path / "no.json"),
        "--output",
        str(tmp_path / "o"),
        "--seq-len",
        "16",
    )
    assert_one_line_error(proc, "tokenizer not found")
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": 1}')
    proc = run_cli(
        "shards",
        "build",
        "--input",
        str(small["corpus"]),
        "--tokenizer",
        str(bad),
        "--output",
        str(tmp_path / "o"),
        "--seq-len",
        "16",
    )
    assert_one_line_error(proc, "not a valid tokenizer.json")
    assert_one_line_error(build(small, tmp_path / "missing-dir", "o2"), "input not found")
    assert_one_line_error(
        run_cli(
            "tokenizer",
            "train",
            "--input",
            str(small["corpus"]),
            "--output",
            str(tmp_path / "t.json"),
            "--vocab-size",
            "100",
        ),
        "too small",
    )


@pytest.mark.slow  # several seconds of its own: in tests/unit, out of -m "not slow"
def test_vocabulary_larger_than_dtype(small, tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "[UNK]": 1}
    words = sorted({w.strip(".,!?") for d in portuguese_documents(60, seed=5, max_sentences=6) for w in d.split()})
    for w in words:
        vocab.setdefault(w, len(vocab))
    for i in range(70_000 - len(vocab)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    big = tmp_path / "big.json"
    tok.save(str(big))
    args = [
        "shards",
        "build",
        "--input",
        str(small["corpus"]),
        "--tokenizer",
        str(big),
        "--seq-len",
        "16",
        "--val-fraction",
        "0",
        "--workers",
        "1",
        "--quiet",
    ]
    assert_one_line_error(
        run_cli(*args, "--output", str(tmp_path / "o16"), "--dtype", "uint16"), "does not fit uint16", "70000"
    )
    assert_ok(run_cli(*args, "--output", str(tmp_path / "o32")))
    assert json.loads((tmp_path / "o32" / "manifest.json").read_text())["dtype"] == "uint32"
    assert_ok(run_cli("shards", "verify", str(tmp_path / "o32"), "--quiet"))
