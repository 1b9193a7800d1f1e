"""A corpus for the parts tests (no tests here): known defects, and duplicates placed so that 3 parts split
them: an exact duplicate across parts, a near duplicate across parts, a document repeated in all three
parts, and a chain A~B~C (A and C share no MinHash band) with one link in every part.

Three .jsonl files of about equal size: ``--part I/3`` gives file I to part I (the tests assert it).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from ptbr.devtools.sample_text import portuguese_documents
from tests.helpers.clean_texts import BOILERPLATE, EN, ES, PT, SHORT, mojibake


@dataclass
class Planted:
    files: list[Path]
    exact: tuple[str, str]  # (first, its duplicate in another part)
    near: tuple[str, str]
    repeated: str  # in all three parts
    chain: tuple[str, str, str]
    clean: list[str]  # every document that must be kept exactly once


def shares_band(a: str, b: str) -> bool:
    from ptbr.clean.config import CleanConfig
    from ptbr.clean.signatures import keys_of

    cfg = CleanConfig()
    return any(x == y for x, y in zip(keys_of(a, cfg)[1:], keys_of(b, cfg)[1:]))


def _edit(words: list[str], rng: random.Random, n: int) -> list[str]:
    out = list(words)
    for i in rng.sample(range(len(out)), n):
        out[i] = rng.choice(["açúcar", "farinha", "mandioca", "limão", "chuva", "saudade"])
    return out


def chain(seed: int = 0) -> tuple[str, str, str]:
    """A ~ B and B ~ C (they share a MinHash band), A !~ C: the first seed that gives it."""
    base = portuguese_documents(1, seed=1000 + seed, min_sentences=30, max_sentences=30)[0]
    words = base.split(" ")
    rng = random.Random(seed)
    for _ in range(500):
        b = _edit(words, rng, 14)
        c = _edit(b, rng, 14)
        a_text, b_text, c_text = base, " ".join(b), " ".join(c)
        if shares_band(a_text, b_text) and shares_band(b_text, c_text) and not shares_band(a_text, c_text):
            return a_text, b_text, c_text
    raise AssertionError("no chain found")


def placement_corpus(root: Path, filler_per_file: int = 6) -> Planted:
    root.mkdir(parents=True, exist_ok=True)
    a, b, c = chain()
    near = (PT[1], PT[1].replace("ontem", "domingo"))
    exact = (PT[2], "  " + PT[2].upper())
    repeated = PT[4]
    fill = portuguese_documents(3 * filler_per_file, seed=11, min_sentences=6, max_sentences=10)
    files = [
        [PT[0], near[0], exact[0], repeated, a, EN[0], *fill[:filler_per_file]],
        [PT[5], near[1], repeated, b, SHORT[0], mojibake(PT[6]), *fill[filler_per_file : 2 * filler_per_file]],
        [PT[7], exact[1], repeated, c, ES[0], BOILERPLATE, PT[3], *fill[2 * filler_per_file :]],
    ]
    paths = []
    for i, docs in enumerate(files):
        path = root / f"p{i}.jsonl"
        path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs), encoding="utf-8")
        paths.append(path)
    clean = [PT[0], PT[1], PT[2], PT[3], PT[4], PT[5], PT[6], PT[7], a]
    return Planted(paths, exact, near, repeated, (a, b, c), clean)
