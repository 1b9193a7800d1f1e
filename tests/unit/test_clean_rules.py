"""Every quality rule of the cleaning config, and the language score, fires on a document made to break it
(and only that document: a good Portuguese paragraph passes them all)."""

from __future__ import annotations

import pytest

from ptbr.clean import rules
from ptbr.clean.config import CleanConfig
from ptbr.clean.part import judge

CFG = CleanConfig()
GOOD = (
    "O governo do estado anunciou hoje um novo programa de saúde pública para as cidades do interior. "
    "Segundo a secretaria, os hospitais regionais vão receber equipamentos modernos e mais profissionais "
    "ao longo do próximo ano. A medida foi recebida com entusiasmo pelos prefeitos, que pediam apoio "
    "há muito tempo para atender a população que vive longe das capitais e não tem acesso a exames."
)
SENTENCES = [s.strip() + "." for s in GOOD.split(".") if s.strip()]
WORDS = GOOD.split()


def lines_of(n: int, make) -> str:
    return "\n".join(make(i) for i in range(n))


BROKEN = {
    # (the document, the rule it breaks); thresholds from configs/clean/pt-br.yaml
    "too_few_words": " ".join(WORDS[:20]),  # < 30 words
    "too_many_words": " ".join(WORDS * 3200),  # > 200,000 words
    "mean_word_length": " ".join(["de", "a", "o", "e", "um", "no", "da"] * 10),  # mean < 3 characters
    "symbol_ratio": GOOD + " " + "#$%&*@!?" * 60,  # > 25 % of the non-space characters are symbols
    "non_alphabetic_words": GOOD + " " + " ".join(f"{i}.{i}%" for i in range(40)),  # < 80 % of words with a letter
    "too_few_stop_words": " ".join(f"palavra{i} governo hospital cidade" for i in range(10)),  # < 2 function words
    "bullet_lines": lines_of(20, lambda i: f"- {SENTENCES[i % len(SENTENCES)]} Item número {i} da lista."),
    "ellipsis_lines": lines_of(10, lambda i: SENTENCES[i % len(SENTENCES)] + ("..." if i % 2 else "")),
    "duplicate_lines": lines_of(12, lambda i: SENTENCES[0] if i % 2 else f"{SENTENCES[i % 4]} Parte {i}."),
    "top_2gram_repetition": GOOD + " " + "saúde pública " * 40,
    # a repeated n-gram repeats its (n-1)-grams too: the counts are chosen so that only the n-gram crosses its limit
    "top_3gram_repetition": GOOD + " " + " ".join(f"alfa beta gama x{i}" for i in range(10)),
    "top_4gram_repetition": GOOD + " " + " ".join(f"alfa beta gama delta y{i}" for i in range(5)),
}


def test_a_good_paragraph_passes_every_rule():
    assert rules.quality_failure(GOOD, CFG) is None
    assert judge(GOOD, CFG).rule is None


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_each_quality_rule_fires_on_its_document(rule: str):
    assert rules.quality_failure(BROKEN[rule], CFG) == rule
    verdict = judge(BROKEN[rule], CFG)
    assert (verdict.rule, verdict.step) == (f"quality:{rule}", "quality")


def test_the_rules_listed_are_the_rules_there_are():
    """A new rule in ptbr/clean/rules.py gets a document here (the README's cleaning table names them too)."""
    import inspect
    import re

    named = set(re.findall(r'return "(\w+)"', inspect.getsource(rules.quality_failure)))
    named |= {f"top_{n}gram_repetition" for n in (2, 3, 4)}
    assert named == set(BROKEN)


def test_portuguese_below_the_language_score_is_dropped_as_such():
    """Mostly Portuguese that turns Spanish midway: py3langid says pt, with a probability under min_score (0.65)."""
    pt = GOOD.split()[:14]
    es = ["ciudades", "del", "interior", "y", "los", "hospitales", "van", "a", "recibir", "equipos"]
    text = " ".join(pt + es)
    lang, score = rules.language(text)
    assert lang == "pt" and 0 < score < CFG.language.min_score, (lang, score)
    verdict = judge(text, CFG)
    assert (verdict.rule, verdict.step) == ("language_score", "language")
    assert (
        judge(
            " ".join(pt + es),
            CFG.model_copy(update={"language": CFG.language.model_copy(update={"min_score": score / 2})}),
        ).rule
        != "language_score"
    )
