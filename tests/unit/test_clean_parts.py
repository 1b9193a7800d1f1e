"""``ptbr corpus clean --part I/N`` + ``--merge N`` give exactly the one-machine output, with duplicates placed
across parts; the cluster rule on a chain; parts are idempotent and re-run alone; the merge refuses a
missing, unfinished, damaged or foreign part with one line. (The same on the real Slurm cluster:
tests/system/test_slurm_data.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ptbr.clean.config import CleanConfig
from ptbr.clean.part import make_plan
from ptbr.clean.pipeline import clean, clean_part, merge_parts
from ptbr.data.parts import PartSpec
from ptbr.errors import DataError
from tests.helpers.data import assert_one_line_error, run_cli
from tests.helpers.dedup_corpus import placement_corpus

QUIET = {"log": lambda _m: None}


def kept(out: Path) -> list[str]:
    return [json.loads(line)["text"] for f in sorted(out.glob("*.jsonl")) for line in f.read_text().splitlines()]


def files_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.jsonl"))}


def report_of(out: Path) -> dict:
    r = json.loads((out / "report.json").read_text())
    r.pop("seconds"), r.pop("timing")
    return r


def run_parts(corpus: Path, out: Path, n: int, memory: int = 512 << 20) -> None:
    cfg = CleanConfig()
    for i in range(n):
        clean_part([str(corpus)], str(out), cfg, PartSpec(i, n), workers=1, memory=memory, **QUIET)
    merge_parts([str(corpus)], str(out), cfg, n, memory=memory, **QUIET)


@pytest.fixture(scope="module")
def placed(tmp_path_factory):
    root = tmp_path_factory.mktemp("placed")
    planted = placement_corpus(root / "in")
    clean([str(root / "in")], str(root / "one"), CleanConfig(), workers=1, **QUIET)
    run_parts(root / "in", root / "three", 3)
    return root, planted


def test_three_parts_give_the_one_machine_files_and_report(placed):
    root, planted = placed
    plan = make_plan([str(root / "in")], CleanConfig())
    assert [[u.file.rel for u in plan.units_for(PartSpec(i, 3))] for i in range(3)] == [
        ["p0.jsonl"],
        ["p1.jsonl"],
        ["p2.jsonl"],
    ]
    assert files_of(root / "three") == files_of(root / "one") and files_of(root / "one")
    assert report_of(root / "three") == report_of(root / "one")
    texts = kept(root / "one")
    for text in planted.clean:  # the first of every duplicate group, once; the mojibake repaired
        assert texts.count(text) == 1, text[:50]
    for dropped in (planted.exact[1], planted.near[1], *planted.chain[1:]):
        assert dropped not in texts
    report = report_of(root / "one")
    assert report["dropped_by_rule"]["exact_duplicate"] == 3  # the case/spacing copy, the repeat twice
    assert report["dropped_by_rule"]["near_duplicate"] == 3  # the near copy and B, C of the chain
    assert report["read"]["files"] == 3 and report["read"]["documents"] == sum(
        len(f.read_text().splitlines()) for f in planted.files
    )


def test_the_memory_budget_changes_nothing_but_memory(placed, tmp_path):
    """2 KiB: the smallest runs in the parts (1,024 documents), and every band merged in several slices."""
    root, _ = placed
    run_parts(root / "in", tmp_path / "small", 2, memory=2048)
    assert files_of(tmp_path / "small") == files_of(root / "one")
    assert report_of(tmp_path / "small") == report_of(root / "one")


def test_a_chain_is_one_cluster_and_only_its_first_document_is_kept(placed):
    """A~B, B~C, A and C not similar (tests/helpers/dedup_corpus.py checks the bands): C goes too, although it
    shares no band with the kept A (the greedy rule would keep it)."""
    root, planted = placed
    a, b, c = planted.chain
    texts = kept(root / "three")
    assert a in texts and b not in texts and c not in texts


def test_a_finished_part_does_nothing_and_a_broken_one_reruns_alone(placed, tmp_path):
    root, _ = placed
    shutil.copytree(root / "three.parts", tmp_path / "out.parts")
    corpus, out, cfg = str(root / "in"), str(tmp_path / "out"), CleanConfig()
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out.parts").rglob("*") if p.is_file()}
    lines: list[str] = []
    clean_part([corpus], out, cfg, PartSpec(1, 3), workers=1, log=lines.append)
    assert lines == [lines[0]] and "done already" in lines[0]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    part1 = tmp_path / "out.parts" / "part-00001-of-00003"
    (part1 / "DONE.json").unlink()  # as a part killed before its commit leaves it
    (part1 / "docs.jsonl").write_text("debris\n")
    with pytest.raises(DataError, match=r"part 1/3 in .* is unfinished .*--part 1/3"):
        merge_parts([corpus], out, cfg, 3, **QUIET)
    clean_part([corpus], out, cfg, PartSpec(1, 3), workers=1, **QUIET)
    others = {p: t for p, t in stamps.items() if part1 not in p.parents}
    assert {p: p.stat().st_mtime_ns for p in others} == others  # parts 0 and 2 untouched
    merge_parts([corpus], out, cfg, 3, **QUIET)
    assert files_of(tmp_path / "out") == files_of(root / "one")
    assert report_of(tmp_path / "out") == report_of(root / "one")
    lines = []
    merge_parts([corpus], out, cfg, 3, log=lines.append)
    assert lines and "nothing to do" in lines[-1]


def test_the_merge_refuses_missing_damaged_and_foreign_parts_with_one_line(placed, tmp_path):
    root, _ = placed
    work = tmp_path / "o.parts"
    shutil.copytree(root / "three.parts", work)
    base = ["corpus", "clean", "--input", str(root / "in"), "--output", str(tmp_path / "o")]
    shutil.rmtree(work / "part-00002-of-00003")
    assert_one_line_error(run_cli(*base, "--merge", "3"), "part 2/3 is missing", "--part 2/3")
    assert_one_line_error(run_cli(*base, "--merge", "2"), "part 0/2 is missing", "parts of another --part count")
    shutil.copytree(root / "three.parts" / "part-00002-of-00003", work / "part-00002-of-00003")
    with open(work / "part-00000-of-00003" / "docs.jsonl", "a") as f:
        f.write("{}\n")
    assert_one_line_error(run_cli(*base, "--merge", "3"), "part 0/3", "is damaged (docs.jsonl has")
    shutil.copytree(root / "three.parts" / "part-00000-of-00003", work / "part-00000-of-00003", dirs_exist_ok=True)
    other = tmp_path / "other.yaml"
    other.write_text("quality:\n  min_words: 20\n")
    clean_part(
        [str(root / "in")],
        str(tmp_path / "x"),
        CleanConfig.load(other),
        PartSpec(1, 3),
        workers=1,
        work=str(tmp_path / "x.parts"),
        **QUIET,
    )
    shutil.rmtree(work / "part-00001-of-00003")
    shutil.copytree(tmp_path / "x.parts" / "part-00001-of-00003", work / "part-00001-of-00003")
    assert_one_line_error(run_cli(*base, "--merge", "3"), "part 1/3", "other inputs, settings or part count")
    assert not (tmp_path / "o").exists()
    assert_one_line_error(run_cli(*base, "--part", "3/3"), "--part 3/3", "0 <= I < N")
    assert_one_line_error(run_cli(*base, "--part", "x"), "--part must look like I/N")
