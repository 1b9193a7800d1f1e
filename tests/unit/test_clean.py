"""Corpus cleaning on a corpus with known defects: exact counts per rule, clean Portuguese kept, repairs
applied, deterministic output, dry run, and the bad inputs."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.clean_texts import BOILERPLATE, EN, ENTITIES, ES, PT, SHORT, SYMBOLS, mojibake
from tests.helpers.train_harness import REPO


def defect_corpus(root: Path) -> Path:
    """a.jsonl: 6 clean, 1 mojibake (repairable), 1 English, 1 Spanish. b.jsonl: 2 exact duplicates of a.jsonl
    (case, spacing), 1 near duplicate (one word changed), 1 clean, 1 English, 1 Spanish, boilerplate, a
    symbol-heavy page, 2 very short documents, 1 clean with HTML entities."""
    root.mkdir(parents=True)
    a = PT[:6] + [mojibake(PT[6]), EN[0], ES[0]]
    b = [
        PT[0].upper(),
        "  " + PT[2].replace(" ", "   ") + "  ",
        PT[1].replace("ontem", "domingo"),
        PT[7],
        EN[1],
        ES[1],
        BOILERPLATE,
        SYMBOLS,
        *SHORT,
        ENTITIES,
    ]
    for name, docs in (("a.jsonl", a), ("b.jsonl", b)):
        (root / name).write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs))
    return root


def ptbr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ptbr.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def kept_texts(out: Path) -> list[str]:
    return [json.loads(line)["text"] for f in sorted(out.glob("*.jsonl")) for line in f.read_text().splitlines()]


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("clean")
    corpus = defect_corpus(tmp / "in")
    proc = ptbr("corpus", "clean", "--input", str(corpus), "--output", str(tmp / "out"), "--workers", "2")
    return corpus, tmp / "out", proc


def test_each_defect_is_dropped_by_its_rule_and_clean_text_is_kept(cleaned):
    _, out, proc = cleaned
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["dropped_by_rule"] == {
        "language:en": 2,
        "language:es": 2,
        "quality:too_few_words": 2,
        "quality:duplicate_lines": 1,
        "quality:symbol_ratio": 1,
        "exact_duplicate": 2,
        "near_duplicate": 1,
    }
    kept = kept_texts(out)
    assert len(kept) == 9 == report["steps_kept"]["near_dedup"]["documents"]
    assert report["steps_kept"]["read"]["documents"] == 20
    assert [report["steps_kept"][s]["documents"] for s in ("language", "quality", "exact_dedup")] == [16, 12, 10]
    for text in PT:  # every clean document once, the first of each duplicate group
        assert sum(1 for k in kept if k == text) == 1, text[:40]
    assert any("educação pública é a base" in k for k in kept)  # HTML entities decoded
    assert not any("Ã" in k for k in kept)  # the mojibake was repaired (to PT[6] itself)
    assert report["sources"]["a.jsonl"]["read"]["documents"] == 9
    assert all(len(v) >= 1 and v[0]["text"] for v in report["examples"].values())
    assert "dropped by rule:" in proc.stdout


def test_output_is_deterministic_and_dry_run_writes_nothing(cleaned, tmp_path):
    corpus, out, _ = cleaned
    again = ptbr("corpus", "clean", "--input", str(corpus), "--output", str(tmp_path / "again"), "--workers", "1")
    assert again.returncode == 0, again.stderr[-2000:]
    for f in out.glob("*.jsonl"):
        assert (tmp_path / "again" / f.name).read_bytes() == f.read_bytes()
    r1, r2 = (json.loads((d / "report.json").read_text()) for d in (out, tmp_path / "again"))
    for r in (r1, r2):
        r.pop("seconds"), r.pop("timing")
    assert r1 == r2
    dry = ptbr(
        "corpus",
        "clean",
        "--input",
        str(corpus),
        "--output",
        str(tmp_path / "dry"),
        "--dry-run",
        "--report",
        str(tmp_path / "dry_report.json"),
    )
    assert dry.returncode == 0 and not (tmp_path / "dry").exists()
    assert json.loads((tmp_path / "dry_report.json").read_text())["dropped_by_rule"] == r1["dropped_by_rule"]


def test_near_dedup_threshold_is_the_bands_and_rows(tmp_path):
    from ptbr.clean.config import CleanConfig

    cfg = CleanConfig.load(REPO / "configs" / "clean" / "pt-br.yaml")
    assert cfg.near_dedup.bands * cfg.near_dedup.rows == 112
    assert cfg.near_dedup.threshold == pytest.approx(0.719, abs=1e-3)


def test_bad_inputs_are_one_line_and_leave_nothing(tmp_path):
    def error_of(*args: str) -> str:
        proc = ptbr("corpus", "clean", *args)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("ptbr: error:")]
        return line

    english = tmp_path / "en"
    english.mkdir()
    (english / "e.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in EN))
    assert "every one of the 2 documents was dropped" in error_of(
        "--input", str(english), "--output", str(tmp_path / "o")
    )
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.jsonl.gz").write_bytes(gzip.compress(b'{"text": "ok"}\n')[:20])
    assert "cannot read" in error_of("--input", str(broken), "--output", str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error_of("--input", str(empty), "--output", str(tmp_path / "o"))
    exists = tmp_path / "exists"
    exists.mkdir()
    assert "already exists; pass --overwrite" in error_of("--input", str(english), "--output", str(exists))
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("quality:\n  min_wrods: 3\n")
    assert "quality.min_wrods" in error_of(
        "--input", str(english), "--output", str(tmp_path / "o"), "--config", str(bad_cfg)
    )


@pytest.mark.slow  # several seconds of its own: in tests/unit, out of -m "not slow"
def test_shards_build_clean_builds_from_the_cleaned_corpus_and_reuses_it(cleaned, tmp_path):
    corpus, _, _ = cleaned
    assert (
        ptbr(
            "tokenizer",
            "train",
            "--input",
            str(corpus),
            "--output",
            str(tmp_path / "tok.json"),
            "--vocab-size",
            "300",
            "--quiet",
        ).returncode
        == 0
    )
    build = (
        "shards",
        "build",
        "--input",
        str(corpus),
        "--tokenizer",
        str(tmp_path / "tok.json"),
        "--output",
        str(tmp_path / "shards"),
        "--seq-len",
        "16",
        "--val-fraction",
        "0",
        "--clean",
        "--quiet",
    )
    first = ptbr(*build)
    assert first.returncode == 0, first.stderr[-2000:]
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["stats"]["documents"] == 9  # the cleaned documents, not the 20 read
    assert (tmp_path / "shards.cleaned" / "report.json").is_file()
    second = ptbr(*build)
    assert second.returncode == 0 and "up to date (same inputs and config); reusing it" in second.stdout + second.stderr


def test_a_file_in_another_encoding_is_named_in_one_warning(tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "utf8.txt").write_text(PT[0], encoding="utf-8")
    (mixed / "latin1.txt").write_bytes(PT[1].encode("latin-1"))
    proc = ptbr("corpus", "clean", "--input", str(mixed), "--output", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    [warning] = [ln for ln in proc.stdout.splitlines() if "invalid UTF-8 sequences were replaced" in ln]
    assert "iconv" in warning
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["read"]["invalid_utf8_replaced"] > 0


def test_cleaning_leaves_the_calling_process_signals_alone(cleaned):
    """shards build --clean cleans, then starts its own worker pool in the same process: that pool must still be
    able to stop its workers with SIGTERM (an ignored SIGTERM is inherited; a first version hung here)."""
    corpus, _, _ = cleaned
    code = (
        "import signal; from ptbr.clean.config import CleanConfig; from ptbr.clean.pipeline import clean; "
        "before = signal.getsignal(signal.SIGINT); "
        f"clean([{str(corpus)!r}], None, CleanConfig(), workers=2, dry_run=True, log=lambda m: None); "
        "print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, signal.getsignal(signal.SIGINT) == before)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0 and proc.stdout.split()[-2:] == ["True", "True"], proc.stdout + proc.stderr[-2000:]


TYPOGRAPHY = (
    "Machado de Assis escreveu: “Não tive filhos, não transmiti a nenhuma criatura o legado da nossa "
    "miséria.” O narrador — um defunto autor — comenta a própria vida com ironia… E o leitor pergunta: "
    "«que livro é este?» A resposta, dizia o crítico, está no ‘método’ do capítulo, e a obra continua a ser "
    "lida nas escolas de todo o país, com edições novas a cada ano – de 1881 a hoje."
)


def test_repair_fixes_what_is_broken_and_keeps_typography_byte_for_byte(tmp_path):
    import unicodedata

    from ptbr.clean.config import CleanConfig
    from ptbr.clean.rules import repair

    cfg = CleanConfig()
    assert repair(TYPOGRAPHY, cfg).encode() == unicodedata.normalize("NFC", TYPOGRAPHY).encode()
    decomposed = unicodedata.normalize("NFD", TYPOGRAPHY)  # NFC is the one change allowed
    assert repair(decomposed, cfg).encode() == unicodedata.normalize("NFC", TYPOGRAPHY).encode()
    assert repair(mojibake("“ação” — é…"), cfg) == "“ação” — é…"  # mojibake of the typography itself
    assert repair("a educa&ccedil;&atilde;o\x00\x07 p&uacute;blica", cfg) == "a educação pública"
    assert repair("ﬁm ＡＢＣ", cfg) == "ﬁm ＡＢＣ"  # ligatures and full-width: written that way, kept

    corpus = tmp_path / "in"
    corpus.mkdir()
    (corpus / "lit.jsonl").write_text(json.dumps({"text": TYPOGRAPHY}, ensure_ascii=False) + "\n", encoding="utf-8")
    proc = ptbr("corpus", "clean", "--input", str(corpus), "--output", str(tmp_path / "out"), "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert kept_texts(tmp_path / "out") == [unicodedata.normalize("NFC", TYPOGRAPHY)]
