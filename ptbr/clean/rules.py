"""Per-document cleaning: repair, language identification, quality rules. Pure functions of the text and
the config, so they run in worker processes and give the same answer everywhere.

Choices (see the README's "Cleaning" section):
* repair: ``ftfy`` (mojibake such as ``aÃ§Ã£o``, HTML entities, control characters), then NFC and
  whitespace normalisation. Only what is broken: ftfy's display defaults also straighten typographic
  quotes, expand ligatures and narrow full-width characters, which rewrites correct Portuguese (“ ”, « »,
  —, … are written on purpose in literature and law) and would teach a model never to write them; those
  three fixes are off;
* language: ``py3langid`` (langid.py's model, shipped inside the package: no download at run time),
  normalised probabilities, on the first 3,000 characters (~1 ms per kB: the slowest step);
* quality: Gopher's rules (Rae et al. 2021) as FineWeb-2 adapts them per language, with Portuguese
  stop words. Written here rather than taken from datatrove: they are a few lines each, and datatrove
  would bring its whole pipeline framework and dependency set for them.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from functools import lru_cache

from ptbr.clean.config import CleanConfig

# the most frequent Portuguese function words: real prose contains several in every paragraph
_STOP_WORDS_TEXT = (
    "a ao aos as à às com como da das de do dos e é ela ele em entre essa esse esta este eu foi há isso já "
    "lhe mais mas me mesmo muito na nas nem no nos não o os ou para pela pelas pelo pelos por quando que "
    "se sem ser seu sua são também tem um uma você"
)
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())
BULLETS = ("•", "-", "*", "·", "‣", "◦", "–", "—", "▪")
_WS = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
_NEWLINES = re.compile(r"\n{3,}")
_WORD = re.compile(r"\w+", re.UNICODE)


def repair(text: str, cfg: CleanConfig) -> str:
    r = cfg.repair
    if r.ftfy:
        import ftfy

        text = ftfy.fix_text(
            text,
            unescape_html=True,
            remove_control_chars=True,
            normalization=None,
            uncurl_quotes=False,
            fix_latin_ligatures=False,
            fix_character_width=False,
        )
    if r.html_entities:
        text = html.unescape(text)
    if r.nfc:
        text = unicodedata.normalize("NFC", text)
    if r.whitespace:
        lines = [_WS.sub(" ", line).strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
        text = _NEWLINES.sub("\n\n", "\n".join(lines)).strip()
    return text


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


LANGUAGE_SAMPLE_CHARS = 3000  # langid needs a few hundred characters; its cost grows with the text


def language(text: str) -> tuple[str, float]:
    lang, score = _identifier().classify(text[:LANGUAGE_SAMPLE_CHARS].replace("\n", " "))
    return str(lang), float(score)


def _ngram_fraction(words: list[str], n: int) -> float:
    """Characters covered by the most frequent word n-gram, over all characters (Gopher's top n-gram rule)."""
    if len(words) < n:
        return 0.0
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    total = sum(len(w) for w in words)
    return sum(len(w) for w in gram) * count / max(total, 1)


def quality_failure(text: str, cfg: CleanConfig) -> str | None:
    """The name of the first quality rule ``text`` breaks, or None."""
    q = cfg.quality
    words = _WORD.findall(text)
    n = len(words)
    if n < q.min_words:
        return "too_few_words"
    if n > q.max_words:
        return "too_many_words"
    mean_len = sum(len(w) for w in words) / n
    if not q.min_mean_word_length <= mean_len <= q.max_mean_word_length:
        return "mean_word_length"
    non_space = [c for c in text if not c.isspace()]
    symbols = sum(1 for c in non_space if not c.isalnum())
    if symbols / max(len(non_space), 1) > q.max_symbol_char_ratio:
        return "symbol_ratio"
    tokens = text.split()
    alpha = sum(1 for t in tokens if any(c.isalpha() for c in t))
    if alpha / max(len(tokens), 1) < q.min_alpha_words_ratio:
        return "non_alphabetic_words"
    lower = [w.lower() for w in words]
    if sum(1 for w in lower if w in STOP_WORDS) < q.min_stop_words:
        return "too_few_stop_words"
    lines = [line for line in text.split("\n") if line.strip()]
    if lines:
        if sum(1 for line in lines if line.lstrip().startswith(BULLETS)) / len(lines) > q.max_bullet_lines_ratio:
            return "bullet_lines"
        if sum(1 for line in lines if line.rstrip().endswith(("...", "…"))) / len(lines) > q.max_ellipsis_lines_ratio:
            return "ellipsis_lines"
        if len(lines) > 1 and 1 - len(set(lines)) / len(lines) > q.max_duplicate_lines_ratio:
            return "duplicate_lines"
    for n_gram, limit in ((2, q.max_top_2gram_ratio), (3, q.max_top_3gram_ratio), (4, q.max_top_4gram_ratio)):
        if _ngram_fraction(lower, n_gram) > limit:
            return f"top_{n_gram}gram_repetition"
    return None


def normalized_for_dedup(text: str) -> str:
    """Case, accents of punctuation and spacing ignored: what makes two documents 'the same text'."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


def shingles(text: str, n: int) -> set[bytes]:
    words = normalized_for_dedup(text).split()
    if len(words) < n:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}
