"""The lm-evaluation-harness model over a :class:`~ptbr.bench.scorer.Scorer` (an export or the live weights).

lm-eval hands text requests in; ``TemplateLM`` tokenizes loglikelihood requests the harness's way (an empty
context becomes the end-of-document token, trailing spaces of a context move into the continuation) and the
scoring itself is :mod:`ptbr.bench.scoring`. ``ptbr.infer.harness.PtbrLM`` is the subclass registered as
``--model ptbr`` that loads an export from ``path=``.
"""

from __future__ import annotations

from typing import Any

from ptbr.bench.scorer import Scorer
from ptbr.bench.scoring import CHUNK, continuation_logprobs, generate
from ptbr.errors import PtbrError

try:
    from lm_eval.api.model import TemplateLM
except ImportError:  # lm-eval is optional (ptbr[bench]): every module of ptbr imports without it

    class TemplateLM:  # type: ignore[no-redef]
        def __init__(self) -> None:
            raise PtbrError("benchmarks need lm-evaluation-harness: pip install 'ptbr[bench]'")


DEFAULT_BATCH = 8
DEFAULT_MAX_GEN_TOKS = 256


def parse_batch_size(value: Any, default: int = DEFAULT_BATCH) -> int:
    """lm-eval's ``--batch_size`` may be a number, "auto" or "auto:N": a number is taken, anything else is the
    default (an RNN's memory per row is small and fixed; there is nothing to search for)."""
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return default


class PtbrHarnessLM(TemplateLM):
    """``loglikelihood`` (batched, one pass per request), ``loglikelihood_rolling`` (a document's total
    log-likelihood, every token once) and ``generate_until`` (RNN mode, greedy by default) for RWKV-6."""

    backend = "causal"

    def __init__(
        self,
        scorer: Scorer,
        batch_size: Any = DEFAULT_BATCH,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        chunk: int = CHUNK,
    ) -> None:
        super().__init__()
        self.scorer = scorer
        self.batch_size = parse_batch_size(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.chunk = int(chunk)
        self._device = scorer.device

    @property
    def eot_token_id(self) -> int:
        return self.scorer.eos_id

    @property
    def tokenizer_name(self) -> str:
        return "ptbr"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.scorer.encode(string)

    def tok_decode(self, tokens: list[int], **kwargs: Any) -> str:
        return self.scorer.decode(tokens)

    def get_model_info(self) -> dict[str, Any]:
        """Recorded in the harness's results under ``config`` (export path, step, tokens)."""
        return dict(getattr(self.scorer, "info", {}) or {})

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)  # tokenizing takes no time to watch

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        out = continuation_logprobs(
            self.scorer, [(ctx, cont) for _, ctx, cont in requests], self.batch_size, self.chunk
        )
        for (key, _, _), result in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", key, result)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        texts = [req.args[0] for req in requests]
        pairs = [([self.prefix_token_id], self.tok_encode(text)) for text in texts]
        out = [lp for lp, _ in continuation_logprobs(self.scorer, pairs, self.batch_size, self.chunk)]
        for text, lp in zip(texts, out):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), lp)
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in requests:
            context, kwargs = req.args[0], dict(req.args[1] if len(req.args) > 1 else {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            text = generate(
                self.scorer,
                self.tok_encode(context),
                until,
                int(kwargs.get("max_gen_toks", self.max_gen_toks)),
                temperature=temperature,
                top_p=float(kwargs.get("top_p", 1.0)),
                seed=int(kwargs.get("seed", 0)),
                chunk=self.chunk,
            )
            self.cache_hook.add_partial("generate_until", (context, req.args[1] if len(req.args) > 1 else {}), text)
            out.append(text)
        return out
