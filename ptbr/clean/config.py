"""The cleaning config (``configs/clean/pt-br.yaml``): every step switchable, every threshold named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from ptbr.config import StrictModel, load_yaml, validate


class RepairConfig(StrictModel):
    enabled: bool = True
    ftfy: bool = Field(
        default=True,
        description="fix mojibake, HTML entities and control characters with ftfy "
        "(typographic quotes, ligatures and widths are kept as written)",
    )
    html_entities: bool = Field(default=True, description="decode &amp; &eacute; ... left after ftfy")
    nfc: bool = True
    whitespace: bool = Field(default=True, description="collapse spaces, strip lines, at most one blank line")


class LanguageConfig(StrictModel):
    enabled: bool = True
    keep: list[str] = Field(default_factory=lambda: ["pt"], description="ISO 639-1 codes to keep")
    min_score: float = Field(default=0.65, ge=0, le=1, description="normalised probability of a kept language")


class QualityConfig(StrictModel):
    """Gopher's rules with Portuguese thresholds (FineWeb-2's adaptation: Portuguese words are longer)."""

    enabled: bool = True
    min_words: int = Field(default=30, ge=0)
    max_words: int = Field(default=200_000, gt=0)
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 12.0
    max_symbol_char_ratio: float = Field(default=0.25, description="non-alphanumeric share of non-space characters")
    min_alpha_words_ratio: float = Field(default=0.8, description="share of words containing a letter")
    min_stop_words: int = Field(default=2, description="Portuguese function words a real text contains")
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    max_duplicate_lines_ratio: float = 0.3
    max_top_2gram_ratio: float = 0.2
    max_top_3gram_ratio: float = 0.18
    max_top_4gram_ratio: float = 0.16


class ExactDedupConfig(StrictModel):
    enabled: bool = True


class NearDedupConfig(StrictModel):
    """MinHash LSH over word n-grams. With b bands of r rows a pair of Jaccard similarity s is caught with
    probability 1 - (1 - s^r)^b; the threshold (1/b)^(1/r) is where that curve is steepest."""

    enabled: bool = True
    ngram: int = Field(default=5, gt=0)
    bands: int = Field(default=14, gt=0)
    rows: int = Field(default=8, gt=0)
    seed: int = 1

    @property
    def threshold(self) -> float:
        return (1 / self.bands) ** (1 / self.rows)


class CleanConfig(StrictModel):
    repair: RepairConfig = RepairConfig()
    language: LanguageConfig = LanguageConfig()
    quality: QualityConfig = QualityConfig()
    exact_dedup: ExactDedupConfig = ExactDedupConfig()
    near_dedup: NearDedupConfig = NearDedupConfig()

    @classmethod
    def load(cls, path: str | Path | None) -> CleanConfig:
        if path is None:
            return cls()
        data: dict[str, Any] = load_yaml(path) or {}
        return validate(cls, data, str(path))  # unknown keys: one line naming them
