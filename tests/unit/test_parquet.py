"""Parquet input for ``tokenizer train``, ``shards build`` and ``corpus clean``: read by row group (the unit a
part gets), the same documents as the same text in .jsonl, nulls counted, and a file without the text column
refused with one line by each command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.data import assert_ok, assert_one_line_error, run_cli, train_tokenizer
from tests.helpers.data_fixtures import local_samples

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict[str, Path]:
    """The same documents as parquet (4 row groups, other columns around the text, one null) and as jsonl."""
    from ptbr.devtools.sample_text import portuguese_documents

    root = tmp_path_factory.mktemp("parquet")
    docs = portuguese_documents(80, seed=9, max_sentences=8)
    table = pa.table({"id": list(range(81)), "text": docs[:40] + [None] + docs[40:], "url": ["u"] * 81})
    (root / "pq").mkdir()
    pq.write_table(table, root / "pq" / "docs.parquet", row_group_size=21)
    (root / "js").mkdir()
    (root / "js" / "docs.jsonl").write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs))
    (root / "bad").mkdir()
    pq.write_table(pa.table({"content": docs[:3]}), root / "bad" / "other.parquet")
    return {"root": root, "pq": root / "pq", "js": root / "js", "bad": root / "bad", "docs": docs}


def test_row_groups_are_units_and_read_in_order(twins):
    from ptbr.data.corpus import ReadStats, discover_inputs, iter_documents, iter_units, units_of

    files = discover_inputs([twins["pq"]])
    units = units_of(files)
    assert [u.row_group for u in units] == [0, 1, 2, 3] and all(u.size > 0 for u in units)
    stats = ReadStats()
    assert list(iter_documents(files, stats)) == twins["docs"]
    assert stats.bad_records == 1 and stats.documents == 80 and stats.files == 1
    stats = ReadStats()
    got = [(u.row_group, text) for u, text in iter_units(units[2:], stats)]
    assert [t for _, t in got] == twins["docs"][41:] and {g for g, _ in got} == {2, 3}
    assert stats.files == 1  # two row groups of one file


@pytest.mark.slow  # several seconds of its own: in tests/unit, out of -m "not slow"
def test_tokenizer_and_shards_from_parquet_equal_those_from_jsonl(twins):
    root = twins["root"]
    for kind in ("pq", "js"):
        train_tokenizer(str(twins[kind]), str(root / f"tok-{kind}.json"), 300)
    assert (root / "tok-pq.json").read_bytes() == (root / "tok-js.json").read_bytes()
    for kind in ("pq", "js"):
        assert_ok(
            run_cli(
                "shards",
                "build",
                "--input",
                str(twins[kind]),
                "--tokenizer",
                str(root / "tok-js.json"),
                "--output",
                str(root / f"ds-{kind}"),
                "--seq-len",
                "16",
                "--val-fraction",
                "0.2",
                "--workers",
                "1",
                "--quiet",
            )
        )
    for split in ("train", "val"):
        assert (local_samples(root / "ds-pq", split) == local_samples(root / "ds-js", split)).all()
    manifest = json.loads((root / "ds-pq" / "manifest.json").read_text())
    assert manifest["stats"]["bad_records_skipped"] == 1


def test_clean_reads_parquet_into_one_jsonl(twins, tmp_path):
    from ptbr.clean.config import CleanConfig
    from ptbr.clean.pipeline import clean

    report = clean([str(twins["pq"])], str(tmp_path / "out"), CleanConfig(), workers=1, log=lambda _m: None)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["docs.jsonl", "report.json"]
    assert report.read["documents"] == 80 and report.read["bad_records_skipped"] == 1


def test_a_parquet_file_without_the_text_column_is_one_line_for_every_command(twins, tokenizer):
    root, bad = twins["root"], str(twins["bad"])
    needle = ("other.parquet: no column 'text' (columns: content)", "--text-field")
    assert_one_line_error(run_cli("tokenizer", "train", "--input", bad, "--output", str(root / "t.json")), *needle)
    assert_one_line_error(
        run_cli(
            "shards",
            "build",
            "--input",
            bad,
            "--tokenizer",
            str(tokenizer),
            "--output",
            str(root / "x"),
            "--seq-len",
            "16",
        ),
        *needle,
    )
    assert_one_line_error(run_cli("corpus", "clean", "--input", bad, "--output", str(root / "y")), *needle)
    assert_one_line_error(
        run_cli("corpus", "clean", "--input", bad, "--output", str(root / "y"), "--part", "0/2"), *needle
    )
    assert not (root / "x" / "manifest.json").exists() and not (root / "y").exists()
