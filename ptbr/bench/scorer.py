"""What the harness model needs of a language model: text <-> tokens, logits of many tokens with a recurrent
state, and one-token steps for generation.

:class:`ModelScorer` provides it for any RWKV-6 module (an exported model, or a copy of the weights a
training run holds) by duck typing, so this package depends on no other part of ptbr. The recurrent state is
opaque here: whatever the model's ``forward`` returns, handed back to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

Step = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]


class Scorer(Protocol):
    device: torch.device
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def logits(self, idx: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Float32 logits [B, T, V] of ``idx`` [B, T] continuing ``state`` (None: the zero state), and the state
        after the last token."""

    def step(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Float32 logits [B, V] after one more token per row ([B]) and the new state (None: the zero state)."""


@dataclass
class ModelScorer:
    """A :class:`Scorer` over an RWKV-6 module (``model(idx, state=..., return_state=True)``) and a
    ``tokenizers.Tokenizer``. ``fast_step`` is a one-token recurrence with the same state layout
    (``ptbr.infer.rnn.RNN.step`` for exports); without it a step is a forward over one token."""

    model: Any
    tokenizer: Any
    eos_id: int
    device: torch.device
    fast_step: Step | None = None
    info: dict[str, Any] = field(default_factory=dict)  # what the results record about the weights

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    @torch.inference_mode()
    def logits(self, idx: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        out, new_state = self.model(idx.to(self.device), state=state, return_state=True)
        return out.float(), new_state

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        tokens = tokens.to(self.device)
        if self.fast_step is not None and state is not None:
            logits, new_state = self.fast_step(tokens, state)
            return logits.float(), new_state
        out, new_state = self.model(tokens[:, None], state=state, return_state=True)
        return out[:, -1].float(), new_state
