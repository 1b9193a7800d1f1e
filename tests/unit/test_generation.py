"""Sampling does what its settings promise, and streamed text never shows half a character or a stop string."""

from __future__ import annotations

import pytest
import torch

from ptbr.data.tokenizer import train_tokenizer
from ptbr.infer.generate import SamplingSettings, TextStream, distribution, penalized, sample

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 3.0, 2.0, -2.0])


def settings(**kw) -> SamplingSettings:
    return SamplingSettings(**{"max_tokens": 10, "temperature": 1.0, "top_p": 1.0, **kw})


def support(probs: torch.Tensor) -> set[int]:
    return {int(i) for i in torch.nonzero(probs).flatten()}


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_top_k_keeps_exactly_k_tokens_even_with_ties(k: int):
    probs = distribution(LOGITS, settings(top_k=k))
    assert len(support(probs)) == k  # logits 2.0 appear twice: a tie at k = 2 or 3 still keeps exactly k
    assert support(probs) <= set(torch.topk(LOGITS, k + 1).indices.tolist())
    assert float(probs.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8, 0.95, 0.999])
def test_top_p_keeps_the_smallest_set_reaching_p(p: float):
    full = torch.softmax(LOGITS, -1)
    ordered = torch.sort(full, descending=True)
    need = int(torch.searchsorted(torch.cumsum(ordered.values, 0), torch.tensor(p))) + 1  # by hand
    probs = distribution(LOGITS, settings(top_p=p))
    assert support(probs) == set(ordered.indices[:need].tolist())
    torch.testing.assert_close(
        probs[ordered.indices[:need]], full[ordered.indices[:need]] / full[ordered.indices[:need]].sum()
    )


def test_penalties_change_the_logits_as_documented():
    counts = torch.tensor([0.0, 1.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    got = penalized(LOGITS, counts, settings(presence_penalty=0.5, frequency_penalty=0.25))
    want = LOGITS.clone()
    want[1] -= 0.5 + 0.25
    want[2] -= 0.5 + 0.75
    torch.testing.assert_close(got, want)
    assert penalized(LOGITS, counts, settings()) is LOGITS  # no penalty: untouched


def test_temperature_zero_is_greedy_on_the_penalized_logits():
    gen = torch.Generator().manual_seed(0)
    assert {sample(LOGITS, torch.zeros(8), settings(temperature=0.0), gen) for _ in range(20)} == {5}
    counts = torch.zeros(8)
    counts[5] = 1
    assert sample(LOGITS, counts, settings(temperature=0.0, presence_penalty=2.0), gen) == 0  # 3 - 2 < 2


def test_temperature_sharpens_and_flattens():
    cold, hot = distribution(LOGITS, settings(temperature=0.5)), distribution(LOGITS, settings(temperature=2.0))
    assert float(cold.max()) > float(torch.softmax(LOGITS, -1).max()) > float(hot.max())


@pytest.fixture(scope="module")
def tokenizer():
    """A small byte-level BPE that never merged the bytes of the emoji: it takes 4 tokens."""
    return train_tokenizer(["olá mundo, até logo"] * 20, vocab_size=300)


def test_a_cut_multibyte_character_is_held_back(tokenizer):
    ids = tokenizer.encode("olá 🙂", add_special_tokens=False).ids
    assert len(tokenizer.encode("🙂", add_special_tokens=False).ids) == 4
    stream = TextStream(tokenizer)
    shown = "".join(stream.add(t) for t in ids[:-2])  # --max-tokens cuts the emoji after 2 of its bytes
    rest = stream.finish()
    assert shown + rest == "olá " and "\ufffd" not in shown + rest
    whole = TextStream(tokenizer)
    assert "".join(whole.add(t) for t in ids) + whole.finish() == "olá 🙂"


def test_stop_strings_are_held_back_across_tokens_and_not_shown(tokenizer):
    stream = TextStream(tokenizer, stops=("mundo",))
    pieces = [stream.add(t) for t in tokenizer.encode("olá mundo, até", add_special_tokens=False).ids]
    assert stream.stopped and "".join(pieces) == "olá "
    assert all("m" not in p for p in pieces)  # "m", "mu", ... were held until the stop was certain
