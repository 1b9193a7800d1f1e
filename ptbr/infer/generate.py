"""Text generation: the prompt ingested in parallel (chunked WKV), then one token at a time (RNN mode).

Memory does not grow with the generated length: the recurrent state is a fixed set of tensors per
layer. Sampling: temperature, top-k, top-p, presence and frequency penalties (over the generated
tokens), stop strings; ``seed`` makes it reproducible. Text is streamed as it is produced: a token that
ends inside a multi-byte UTF-8 character is held back until the character is complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ptbr.errors import PtbrError
from ptbr.infer.model_io import LoadedModel
from ptbr.infer.rnn import RNN
from ptbr.model.rwkv6 import LayerState

PREFILL_CHUNK = 1024  # prompt tokens per forward pass: activation memory bounded, state carried across
MAX_PROMPT_TOKENS = 1 << 20


@dataclass
class SamplingSettings:
    max_tokens: int = 200
    temperature: float = 1.0
    top_p: float = 0.9
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # keep going past the end-of-document token (benchmarks, memory tests)
    max_prompt_tokens: int = MAX_PROMPT_TOKENS

    def check(self) -> None:
        if self.max_tokens < 0:
            raise PtbrError(f"--max-tokens must be >= 0, got {self.max_tokens}")
        if self.temperature < 0:
            raise PtbrError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise PtbrError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise PtbrError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")


@torch.inference_mode()
def prefill(lm: LoadedModel, tokens: list[int], chunk: int = PREFILL_CHUNK) -> tuple[torch.Tensor, list[LayerState]]:
    """Logits after the last prompt token and the state, the prompt processed ``chunk`` tokens at a time."""
    model, state = lm.model, None
    logits = None
    for i in range(0, len(tokens), chunk):
        idx = torch.tensor([tokens[i : i + chunk]], device=lm.device)
        out, state = model(idx, state=state, return_state=True, last_only=True)
        logits = out[:, -1].float()
    return logits, state


def penalized(logits: torch.Tensor, counts: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    """Logits minus ``presence_penalty`` for every token already generated and ``frequency_penalty`` times
    how often it was (OpenAI's definition)."""
    if not (s.presence_penalty or s.frequency_penalty):
        return logits
    return logits - (s.presence_penalty * (counts > 0).float() + s.frequency_penalty * counts)


def distribution(logits: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    """The probabilities sampled from (temperature > 0): softmax at the temperature, then only the ``top_k``
    likeliest tokens, then only the smallest set of likeliest tokens whose probability reaches ``top_p``."""
    probs = torch.softmax(logits / s.temperature, dim=-1)
    if s.top_k:
        kth = torch.topk(probs, min(s.top_k, probs.numel())).indices
        probs = torch.zeros_like(probs).scatter(0, kth, probs[kth])  # exactly k, ties or not
    if s.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        total = sorted_probs.sum()
        keep = torch.cumsum(sorted_probs, 0) - sorted_probs < s.top_p * total  # the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs * keep)
    return probs / probs.sum()


def sample(logits: torch.Tensor, counts: torch.Tensor, s: SamplingSettings, gen: torch.Generator) -> int:
    """The next token: greedy at temperature 0, else drawn from :func:`distribution` of the penalized logits."""
    logits = penalized(logits, counts, s)
    if s.temperature == 0:
        return int(torch.argmax(logits))
    return int(torch.multinomial(distribution(logits, s), 1, generator=gen))


def generate(
    lm: LoadedModel, prompt: str, settings: SamplingSettings, on_token: Callable[[int], None] | None = None
) -> Iterator[str]:
    """Yield the continuation of ``prompt`` piece by piece (complete UTF-8 characters only); ``on_token``
    sees every sampled token id."""
    settings.check()
    if not prompt:
        raise PtbrError("--prompt is empty: give some text to continue")
    tokens = lm.tokenizer.encode(prompt, add_special_tokens=False).ids
    if len(tokens) > settings.max_prompt_tokens:
        raise PtbrError(
            f"the prompt has {len(tokens):,} tokens, more than the {settings.max_prompt_tokens:,} "
            "accepted (--max-prompt-tokens)"
        )
    gen = torch.Generator().manual_seed(settings.seed if settings.seed is not None else torch.seed())
    logits, state = prefill(lm, tokens)
    rnn = RNN(lm.model)
    counts = torch.zeros(logits.shape[-1])
    text = TextStream(lm.tokenizer, settings.stop)
    for _ in range(settings.max_tokens):
        token = sample(logits[0].cpu(), counts, settings, gen)
        if token == lm.eos_id and not settings.ignore_eos:
            break
        counts[token] += 1
        if on_token is not None:
            on_token(token)
        piece = text.add(token)
        if piece:
            yield piece
        if text.stopped:
            return
        logits, state = rnn.step(torch.tensor([token], device=lm.device), state)
    rest = text.finish()
    if rest:
        yield rest


class TextStream:
    """Token ids in, text out, only what is certain: complete UTF-8 characters (byte-level BPE may cut one
    across tokens), and nothing that may be the start of a stop string. ``finish`` gives what is left when
    generation ends, without a character cut in half (no U+FFFD at the end of a ``--max-tokens`` cut)."""

    def __init__(self, tokenizer, stops: tuple[str, ...] = ()) -> None:
        self.tokenizer, self.stops = tokenizer, stops
        self.pending: list[int] = []  # tokens not decoded yet: they end inside a multi-byte character
        self.held = ""  # decoded text not shown yet: it may be the start of a stop string
        self.stopped = False

    def add(self, token: int) -> str:
        """The text that ``token`` completes (possibly ""); sets ``stopped`` at a stop string (not included),
        after which nothing more is shown."""
        if self.stopped:
            return ""
        self.pending.append(token)
        piece = self.tokenizer.decode(self.pending)  # byte-level BPE: any token boundary is a byte boundary
        if piece.endswith("\ufffd"):  # a character is still incomplete: wait for its next byte
            return ""
        self.pending = []
        self.held += piece
        hits = [i for i in (self.held.find(st) for st in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.held = self.held[: min(hits)], ""
            return out
        keep = _stop_prefix_at_end(self.held, self.stops)
        out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return out

    def finish(self) -> str:
        """What is held back, and the complete characters of the pending tokens (an incomplete one is dropped)."""
        if self.stopped:
            return ""
        tail = self.tokenizer.decode(self.pending).rstrip("\ufffd") if self.pending else ""
        self.pending = []
        return self.held + tail


def _stop_prefix_at_end(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that begins some stop string (to be held back)."""
    return max((k for st in stops for k in range(1, len(st)) if text.endswith(st[:k])), default=0)


def run(lm: LoadedModel, prompt: str, settings: SamplingSettings, write: Callable[[str], None]) -> str:
    pieces = []
    for piece in generate(lm, prompt, settings):
        write(piece)
        pieces.append(piece)
    return "".join(pieces)
