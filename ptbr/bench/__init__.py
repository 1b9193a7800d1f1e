"""Benchmarks through EleutherAI's lm-evaluation-harness, for any RWKV-6 weights: an export or the live model.

``harness`` is the harness model (an ``lm_eval.api.model.LM``) over a :class:`~ptbr.bench.scorer.Scorer`;
``suites`` names the task lists; ``runner`` runs them with one-line errors; ``results`` turns the harness's
output into rows, JSON and markdown. Nothing here loads an export or touches a training engine: inference
(``ptbr.infer.harness``) and training (``ptbr.train.bench``) hand in a scorer, so both share one scoring path.
Nothing here imports ``lm_eval`` at package import either (it is an optional dependency, ``ptbr[bench]``).
"""
