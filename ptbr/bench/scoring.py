"""The three things a benchmark asks of a language model, on token ids, for any :class:`~ptbr.bench.scorer.Scorer`.

- :func:`continuation_logprobs`: log P(continuation | context) and whether greedy decoding would produce it.
  Requests are sorted by length and batched; each row is context + continuation, right-padded, in one pass
  over the sequence (the chunked WKV ingests the tokens in parallel, ``chunk`` at a time with the recurrent
  state carried, so memory is bounded whatever the length). Right padding is exact for an RNN: a padded
  position comes after every scored one and cannot change it. There is no context window to truncate to.
- The rolling log-likelihood of a document is the same computation with the end-of-document token as context:
  every token of the document is predicted once, with all the text before it (``ptbr eval --text`` computes the
  same sum through the training loss path).
- :func:`generate`: the prompt ingested in parallel, then one token at a time in RNN mode, greedy unless a
  temperature is given, cut before the first stop string.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ptbr.bench.scorer import Scorer

CHUNK = 512  # tokens per forward pass: bounds the [B, chunk, vocab] logits, the state carries across chunks


@torch.inference_mode()
def continuation_logprobs(
    scorer: Scorer, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 8, chunk: int = CHUNK
) -> list[tuple[float, bool]]:
    """(sum of log-probabilities of ``cont``'s tokens after ``ctx``, every one of them the argmax) per
    (ctx, cont) pair; ``ctx`` must not be empty (lm-eval puts the end-of-document token there)."""
    results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
    order = sorted(
        (i for i, (_, cont) in enumerate(pairs) if cont), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1]))
    )
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        seqs = [list(pairs[i][0]) + list(pairs[i][1]) for i in rows]
        if any(not pairs[i][0] for i in rows):
            raise ValueError("a continuation needs a non-empty context (the end-of-document token at least)")
        width = max(len(s) for s in seqs) - 1
        idx = torch.full((len(rows), width), scorer.eos_id, dtype=torch.long)
        target = torch.full((len(rows), width), scorer.eos_id, dtype=torch.long)
        scored = torch.zeros((len(rows), width), dtype=torch.bool)
        for r, (i, seq) in enumerate(zip(rows, seqs)):
            n = len(seq) - 1
            idx[r, :n] = torch.tensor(seq[:-1])
            target[r, :n] = torch.tensor(seq[1:])
            scored[r, len(pairs[i][0]) - 1 : n] = True  # the positions whose next token is a continuation token
        total = torch.zeros(len(rows), dtype=torch.float64)
        greedy = torch.ones(len(rows), dtype=torch.bool)
        state = None
        for s in range(0, width, chunk):
            logits, state = scorer.logits(idx[:, s : s + chunk], state)
            logits = logits.cpu()
            tgt, mask = target[:, s : s + chunk], scored[:, s : s + chunk]
            logp = torch.log_softmax(logits, dim=-1).gather(-1, tgt[..., None]).squeeze(-1)
            total += (logp.double() * mask).sum(1)
            greedy &= ((logits.argmax(-1) == tgt) | ~mask).all(1)
        for r, i in enumerate(rows):
            results[i] = (float(total[r]), bool(greedy[r]))
    return results


@torch.inference_mode()
def generate(
    scorer: Scorer,
    context: Sequence[int],
    until: Sequence[str],
    max_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    chunk: int = CHUNK,
) -> str:
    """The text that follows ``context``, cut before the first of ``until``, at most ``max_tokens`` tokens,
    ending early at the end-of-document token."""
    context = list(context) or [scorer.eos_id]
    state, last = None, None
    for s in range(0, len(context), chunk):
        logits, state = scorer.logits(torch.tensor([context[s : s + chunk]]), state)
        last = logits[0, -1].cpu()
    gen = torch.Generator().manual_seed(seed)
    out: list[int] = []
    text = ""
    for _ in range(max_tokens):
        token = _pick(last, temperature, top_p, gen)
        if token == scorer.eos_id:
            break
        out.append(token)
        text = scorer.decode(out)
        cut = min((i for i in (text.find(u) for u in until if u) if i >= 0), default=-1)
        if cut >= 0:
            return text[:cut]
        logits, state = scorer.step(torch.tensor([token]), state)
        last = logits[0].cpu()
    return text


def _pick(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, 0) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs * keep)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))
