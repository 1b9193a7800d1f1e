"""``ptbr eval``: loss, perplexity and bits per UTF-8 byte of an exported model on a dataset split or on texts.

The samples are the split's first ``max_samples`` (in order, as the training run's evaluation reads
them), so the loss of an fp32 export equals the run's own validation loss. Bits per byte divide the
summed negative log-likelihood (in bits) by the UTF-8 bytes the predicted tokens decode to: unlike
perplexity it compares models with different tokenizers.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

from ptbr.errors import PtbrError
from ptbr.infer.model_io import LoadedModel
from ptbr.model.loss import bucket_edges, bucket_losses


@dataclass
class EvalResult:
    samples: int
    tokens: int
    bytes: int
    loss: float
    ppl: float
    bits_per_byte: float
    loss_by_position: dict[str, float]
    documents: list[dict[str, float]] | None = None  # --text: each document's summed NLL, tokens and bytes

    def as_dict(self) -> dict[str, Any]:
        out = {
            "samples": self.samples,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "loss": self.loss,
            "ppl": self.ppl,
            "bits_per_byte": self.bits_per_byte,
            "loss_by_position": self.loss_by_position,
        }
        if self.documents is not None:
            out["documents"] = self.documents
        return out


def utf8_bytes_per_token(tokenizer, vocab_size: int) -> torch.Tensor:
    """The UTF-8 bytes each token stands for: byte-level BPE writes every byte as one character of the
    token's string; special tokens (end of document) stand for no text."""
    specials = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    table = torch.zeros(vocab_size, dtype=torch.int64)
    for i in range(min(vocab_size, tokenizer.get_vocab_size(with_added_tokens=True))):
        token = tokenizer.id_to_token(i)
        if token is not None and token not in specials:
            table[i] = len(token)
    return table


@torch.inference_mode()
def evaluate(
    lm: LoadedModel,
    source: str,
    split: str = "val",
    max_samples: int | None = None,
    batch_size: int = 8,
    cache_dir: str | None = None,
) -> EvalResult:
    from ptbr.data import build_dataset, prepare_streaming_env, read_manifest

    manifest = read_manifest(source)
    if int(manifest["vocab_size"]) > lm.model.config.vocab_size:
        raise PtbrError(
            f"{source} was tokenized with {manifest['vocab_size']} tokens, more than the model's "
            f"{lm.model.config.vocab_size}"
        )
    tok_sha = (manifest.get("tokenizer") or {}).get("sha256")
    if lm.config.get("tokenizer_sha256") and tok_sha and tok_sha != lm.config["tokenizer_sha256"]:
        raise PtbrError(
            f"{source} was tokenized with another tokenizer than the model's (sha256 {tok_sha[:16]} vs "
            f"{lm.config['tokenizer_sha256'][:16]}): its losses would mean nothing"
        )
    prepare_streaming_env()
    cache = cache_dir or os.path.join(tempfile.gettempdir(), f"ptbr-eval-{os.geteuid()}")
    ds = build_dataset(source, split, cache_root=cache, batch_size=batch_size, shuffle=False, seed=0)
    n = min(max_samples or ds.num_samples, ds.num_samples)
    if n == 0:
        raise PtbrError(f"{source}: split {split} has no samples")
    token_bytes = utf8_bytes_per_token(lm.tokenizer, lm.model.config.vocab_size)
    nll, tokens, nbytes = 0.0, 0, 0
    per_position = torch.zeros(int(manifest["seq_len"]), dtype=torch.float64)
    for start in range(0, n, batch_size):
        items = [ds[i] for i in range(start, min(start + batch_size, n))]
        x = torch.stack([it["input"] for it in items]).to(lm.device)
        y = torch.stack([it["target"] for it in items]).to(lm.device)
        token_nll = lm.model(x, targets=y, reduction="none")  # [B, T] float32, as training evaluates
        nll += float(token_nll.double().sum())
        per_position += token_nll.double().sum(0).cpu()
        tokens += y.numel()
        nbytes += int(token_bytes[y.cpu()].sum())
    del ds
    loss = nll / tokens
    return EvalResult(
        n,
        tokens,
        nbytes,
        loss,
        math.exp(min(loss, 50.0)),
        nll / math.log(2) / max(nbytes, 1),
        bucket_losses(per_position, n),
    )


TEXT_SEGMENT = 1024  # tokens per pass over a long document (the state carried): bounded logits memory


def read_texts(paths: list[str]) -> list[str]:
    """Documents from files: every line's ``text`` of a .jsonl, otherwise the whole file as one document."""
    import json
    from pathlib import Path

    docs: list[str] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise PtbrError(f"--text {path}: no such file")
        raw = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".jsonl":
            try:
                docs += [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise PtbrError(f'--text {path}: every line must be a JSON object with a "text" field') from None
        else:
            docs.append(raw)
    if not any(docs):
        raise PtbrError("--text: the files hold no text")
    return docs


@torch.inference_mode()
def evaluate_texts(lm: LoadedModel, texts: list[str]) -> EvalResult:
    """Each document scored on its own, as lm-evaluation-harness's rolling log-likelihood defines it: the
    end-of-document token, then every token of the document predicted once from all the text before it, through
    the training loss (``model(x, targets=y, reduction="none")``, in segments with the state carried)."""
    token_bytes = utf8_bytes_per_token(lm.tokenizer, lm.model.config.vocab_size)
    docs, nll, tokens, nbytes = [], 0.0, 0, 0
    encoded = [lm.tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    longest = max((len(ids) for ids in encoded), default=0)
    per_position = torch.zeros(max(longest, 1), dtype=torch.float64)
    count = torch.zeros(max(longest, 1), dtype=torch.float64)
    for ids in encoded:
        if not ids:
            docs.append({"nll": 0.0, "tokens": 0, "bytes": 0})
            continue
        x = torch.tensor([[lm.eos_id, *ids[:-1]]], device=lm.device)
        y = torch.tensor([ids], device=lm.device)
        token_nll = lm.model(x, targets=y, reduction="none", segment_len=TEXT_SEGMENT)[0].double().cpu()
        doc_bytes = int(token_bytes[y[0].cpu()].sum())
        docs.append({"nll": float(token_nll.sum()), "tokens": len(ids), "bytes": doc_bytes})
        nll += float(token_nll.sum())
        tokens += len(ids)
        nbytes += doc_bytes
        per_position[: len(ids)] += token_nll
        count[: len(ids)] += 1
    if tokens == 0:
        raise PtbrError("--text: the documents hold no tokens")
    loss = nll / tokens
    by_position = {
        f"{lo}-{hi}": float(per_position[lo:hi].sum() / count[lo:hi].sum())
        for lo, hi in bucket_edges(longest)
        if count[lo:hi].sum() > 0
    }
    return EvalResult(
        len(texts),
        tokens,
        nbytes,
        loss,
        math.exp(min(loss, 50.0)),
        nll / math.log(2) / max(nbytes, 1),
        by_position,
        docs,
    )
