"""``--model ptbr`` for lm-evaluation-harness: an exported model (``ptbr export``) as a harness model.

``lm_eval --model ptbr --model_args path=exports/1b5,device=cuda --tasks ...`` constructs :class:`PtbrLM`
with ``path`` (``pretrained`` is accepted as its alias), ``device``, ``batch_size``, ``dtype`` (fp32, bf16,
fp16; default: float32 on CPU, the export's dtype on CUDA), ``max_gen_toks`` and ``chunk`` (tokens per
forward pass, 512). How the stock ``lm_eval``
command finds the name is explained in :mod:`ptbr.bench.lm_eval_hook`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ptbr.bench.harness import DEFAULT_BATCH, DEFAULT_MAX_GEN_TOKS, PtbrHarnessLM
from ptbr.bench.scorer import ModelScorer
from ptbr.bench.scoring import CHUNK
from ptbr.errors import PtbrError
from ptbr.infer.model_io import LoadedModel, load_model
from ptbr.infer.rnn import RNN
from ptbr.log import info

try:
    from lm_eval.api.registry import register_model
except ImportError:  # lm-eval is optional (ptbr[bench]); PtbrLM then refuses to start (PtbrHarnessLM)

    def register_model(*names: str):  # type: ignore[no-redef]
        return lambda cls: cls


DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def export_scorer(lm: LoadedModel, path: str | Path) -> ModelScorer:
    """A scorer over a loaded export: parallel ingestion through the model's chunked (CPU) or Triton (CUDA) WKV,
    one-token steps through the RNN recurrence; ``info`` says which weights these are (step and tokens)."""
    info = {
        "export": str(Path(path).resolve()),
        "step": lm.config.get("step"),
        "tokens": lm.config.get("tokens"),
        "dtype": str(next(lm.model.parameters()).dtype).replace("torch.", ""),
        "device": str(lm.device),
    }
    return ModelScorer(lm.model, lm.tokenizer, lm.eos_id, lm.device, fast_step=RNN(lm.model).step, info=info)


@register_model("ptbr")
class PtbrLM(PtbrHarnessLM):
    """An exported ptbr model for lm-evaluation-harness (see the module docstring for its arguments)."""

    def __init__(
        self,
        path: str | None = None,
        pretrained: str | None = None,
        device: str | None = None,
        batch_size: Any = DEFAULT_BATCH,
        dtype: str | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        chunk: int = CHUNK,
        **_ignored: Any,
    ) -> None:
        path = path or pretrained
        if not path:
            raise PtbrError("--model ptbr needs the export directory: --model_args path=exports/NAME")
        if dtype is not None and str(dtype) not in DTYPES:
            raise PtbrError(f"dtype must be one of {', '.join(sorted(DTYPES))}, got {dtype!r}")
        lm = load_model(path, device or "auto", DTYPES[str(dtype)] if dtype is not None else None)
        super().__init__(export_scorer(lm, path), batch_size=batch_size, max_gen_toks=max_gen_toks, chunk=chunk)
        self.loaded = lm

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> PtbrLM:
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> PtbrLM:
        """``--model_args`` win over the command's own options (lm-eval passes both; its ``--device`` defaults to
        cuda:0, which on a machine without CUDA means the CPU, as for its own hf model)."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        if str(extra.get("device", "")).startswith("cuda") and not torch.cuda.is_available():
            info(f"warning: --device {extra['device']}: no CUDA device here, evaluating on the CPU")
            extra["device"] = "cpu"
        return cls(**arg_dict, **extra)
