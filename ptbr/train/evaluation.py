"""Validation loss during training: per source, pooled, and by token position, independent of the world size.

The validation samples are read once, when the run starts (each rank its share of the first
``train.eval_samples`` of every source), so an evaluation never waits on the data source. Evaluating is
collective: every rank runs the same number of equally sized batches (ZeRO-3 gathers parameters together)
and padding rows weigh 0, so the figures do not depend on how many ranks there are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as tdist

from ptbr.data.faults import classify
from ptbr.dist import DistEnv
from ptbr.errors import PtbrError
from ptbr.model.loss import bucket_losses

# (stop requested here, this rank's data fault) -> (any rank stopped, the worst fault of any rank)
Agree = Callable[[bool, PtbrError | None], tuple[bool, PtbrError | None]]


class Evaluator:
    """Holds this rank's validation samples of every source and computes the validation loss with an engine."""

    def __init__(
        self,
        env: DistEnv,
        device: torch.device,
        micro_batch_size: int,
        eval_samples: int,
        segment_len: int | None,
        agree: Agree,
    ) -> None:
        self.env, self.device, self.micro_batch_size = env, device, micro_batch_size
        self.eval_samples, self.segment_len, self.agree = eval_samples, segment_len, agree
        self.sets: dict[str, tuple[torch.Tensor, int]] = {}  # name -> (this rank's rows, samples in all)
        self.datasets: list[Any] = []  # kept open for the run, as streaming expects of a dataset it registered

    def add_source(self, name: str, val_ds: Any, source: str) -> None:
        """Collective: read this rank's share of the first ``eval_samples`` validation samples of one source
        (int32 [k, seq_len+1]). Every rank gets the same number of rows: indices past the count are padding.
        A data-source failure on any rank is raised on every rank."""
        n = min(self.eval_samples, len(val_ds))
        world, rank = self.env.world_size, self.env.rank
        rows, fault = [], None
        try:
            for j in range(-(-n // world)):
                item = val_ds[min(rank + world * j, n - 1)]
                rows.append(torch.cat([item["input"], item["target"][-1:]]).to(torch.int32))
        except Exception as exc:  # noqa: BLE001 - data-source failures are agreed on below
            fault = classify(exc, source)
            if fault is None:
                raise
        _, fault = self.agree(False, fault)
        if fault:
            raise fault
        self.datasets.append(val_ds)
        self.sets[name] = (torch.stack(rows), n)

    @torch.no_grad()
    def evaluate(self, engine: Any) -> dict[str, Any]:
        """Collective: mean token NLL over the validation samples of every source (``val_loss_<name>`` each
        when there are several, ``val_loss`` pooled over all their tokens), perplexity, and loss by position."""
        totals = {name: self._nll_sum(engine, tokens, n) for name, (tokens, n) in self.sets.items()}
        per_position = sum(totals.values())  # [T + 1]: summed NLL at every position, then the sequence count
        nll, count = per_position[:-1], float(per_position[-1])
        loss = float(nll.sum() / (count * len(nll)))
        result: dict[str, Any] = {
            "val_loss": loss,
            "val_ppl": math.exp(min(loss, 50.0)),
            "val_tokens": int(count * len(nll)),
            "val_loss_by_position": bucket_losses(nll, count),
        }
        if len(totals) > 1:
            result.update(
                {f"val_loss_{name}": float(t[:-1].sum() / (t[-1] * (len(t) - 1))) for name, t in totals.items()}
            )
        return result

    def _nll_sum(self, engine: Any, eval_tokens: torch.Tensor, n: int) -> torch.Tensor:
        """Summed NLL at every position over the first ``n`` samples, then their count ([T + 1]), all ranks
        together."""
        world, rank, mb = self.env.world_size, self.env.rank, self.micro_batch_size
        ids = torch.tensor([rank + world * j for j in range(len(eval_tokens))])
        total = torch.zeros(eval_tokens.shape[1], dtype=torch.float64, device=self.device)
        engine.eval()
        for start in range(0, len(ids), mb):
            rows = torch.arange(start, min(start + mb, len(ids)))
            pad = mb - len(rows)
            weight = torch.cat([(ids[rows] < n).to(torch.float64), torch.zeros(pad, dtype=torch.float64)])
            rows = torch.cat([rows, rows[-1:].expand(pad)])  # keep every batch the same size
            tokens = eval_tokens[rows].long().to(self.device)
            x, y = tokens[:, :-1], tokens[:, 1:]
            nll = engine(x, targets=y, segment_len=self.segment_len, reduction="none")
            weight = weight.to(self.device)
            total[:-1] += (nll.view(mb, -1).double() * weight[:, None]).sum(0)
            total[-1] += weight.sum()
        engine.train()
        tdist.all_reduce(total)
        return total.cpu()
