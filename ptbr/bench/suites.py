"""Named task lists. ``ptbr_core`` is the default: Portuguese tasks of lm-evaluation-harness that a base model
of 140M-1.5B parameters moves on while it pre-trains, all scored by log-likelihood (no generation), so the
whole suite takes minutes on one GPU.

- ``lambada_openai_mt_stablelm_pt``: the last word of a passage (LAMBADA, translated). The earliest signal:
  perplexity and accuracy move from the first few thousand steps.
- ``hellaswag_pt``: commonsense sentence completion, 4 endings (translated). The standard completion task;
  leaves chance (25 %) around 400M parameters.
- ``arc_pt``: grade-school science questions (ARC-Challenge, translated): knowledge plus reasoning.
- ``xwinograd_pt``: pronoun resolution in Winograd schemas written in Portuguese (not translated).
- ``belebele_por_Latn``: reading comprehension over FLORES passages, 4 answers. Near chance for small models:
  it shows when reading starts to work.
- ``assin2_rte``: entailment between Brazilian Portuguese sentence pairs (ASSIN 2): native data of the variety
  ptbr trains on.

Left out: ``flores_pt`` translation and ``assin2_sts`` (generation: slow, and meaningless for a base model this
small), ``global_mmlu_pt`` / ``m_mmlu_pt`` (57 subjects, near chance below ~1B parameters, the longest to run),
``truthfulqa_pt_*`` (adversarial: small models score by accident). Run any of them by name with ``--tasks``.
The tasks download their data from the Hugging Face Hub on first use (then cached in ``HF_HOME``).
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"  # lm-eval task YAMLs shipped with ptbr (the suite's group)
DEFAULT_SUITE = "ptbr_core"
SUITES: dict[str, tuple[str, ...]] = {
    "ptbr_core": (
        "lambada_openai_mt_stablelm_pt",
        "hellaswag_pt",
        "arc_pt",
        "xwinograd_pt",
        "belebele_por_Latn",
        "assin2_rte",
    ),
}


def task_names(spec: str | None) -> list[str]:
    """``--tasks``: a suite name, or task and group names separated by commas (default: the default suite)."""
    spec = (spec or DEFAULT_SUITE).strip()
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        for name in SUITES.get(part, (part,)) if part else ():
            if name not in names:
                names.append(name)
    return names
