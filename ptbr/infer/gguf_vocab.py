"""ptbr's tokenizer.json as the vocabulary llama.cpp reads from a GGUF file.

llama.cpp's byte-level BPE is the ``gpt2`` tokenizer model: the token strings in the GPT-2 byte alphabet
(``Ġ`` for a space, as in tokenizer.json), the merges as ``"left right"`` strings in rank order, a type per
token (special tokens are CONTROL, so they are matched in text only when asked and never printed as text),
and a pre-tokenizer named by ``tokenizer.ggml.pre``. ``gpt-2`` selects the regex
``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)`` with the ``\\s+`` fallback
(llama.cpp's ``unicode_regex_split_custom_gpt2``): the split of ``ByteLevel(use_regex=True)``, ours.

What does not carry over: our NFC normaliser. llama.cpp normalises nothing for BPE vocabularies, so a
decomposed accent (``c`` + U+0327) stays two code points there and tokenizes differently; NFC-normalise
text before giving it to llama.cpp (README "Run it elsewhere"). Any other pipeline (another pre-tokenizer,
a BPE with byte fallback, dropout or word affixes) cannot be expressed and is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptbr.data.tokenizer import EOS_TOKEN
from ptbr.errors import PtbrError

TOKENIZER_MODEL = "gpt2"
PRE_TOKENIZER = "gpt-2"
# llama_token_type (llama.cpp's include/llama.h), as gguf.TokenType numbers them
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


@dataclass(frozen=True)
class GgufVocab:
    """Everything ``tokenizer.ggml.*`` holds, indexed by token id."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    eos_id: int
    pad_id: int | None
    nfc: bool  # the tokenizer NFC-normalises its input (llama.cpp will not)


def _check_pipeline(data: dict[str, Any], path: Path) -> bool:
    """Refuse what llama.cpp's ``gpt2``/``gpt-2`` tokenizer would split or merge differently; True when NFC."""
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise PtbrError(f"{path}: a {model.get('type')} tokenizer; the GGUF export supports byte-level BPE only")
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise PtbrError(f"{path}: BPE with {key}={model[key]!r} cannot be expressed in llama.cpp's gpt2 model")
    if model.get("byte_fallback"):
        raise PtbrError(f"{path}: BPE with byte_fallback cannot be expressed in llama.cpp's gpt2 model")
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space"):
        raise PtbrError(
            f"{path}: pre-tokenizer {json.dumps(pre)} is not ByteLevel(use_regex=True, "
            "add_prefix_space=False), the only one mapped to llama.cpp's 'gpt-2'"
        )
    norm = data.get("normalizer")
    if norm not in (None, {"type": "NFC"}):
        raise PtbrError(
            f"{path}: normalizer {json.dumps(norm)} cannot be expressed in GGUF (only NFC, which "
            "llama.cpp's callers must apply themselves)"
        )
    return norm is not None


def _merge_text(merge: Any) -> str:
    """tokenizers < 0.20 writes a merge as ``"a b"``, later versions as ``["a", "b"]``."""
    return merge if isinstance(merge, str) else " ".join(merge)


def vocab_from_tokenizer(path: str | Path, vocab_size: int, eos_token: str = EOS_TOKEN) -> GgufVocab:
    """The GGUF vocabulary of ``tokenizer.json``, padded with unused tokens up to the model's ``vocab_size``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PtbrError(f"cannot read the tokenizer {path}: {exc}") from None
    nfc = _check_pipeline(data, path)
    by_id: dict[int, str] = {int(i): t for t, i in data["model"]["vocab"].items()}
    kinds: dict[int, int] = {}
    for added in data.get("added_tokens", []):
        by_id[int(added["id"])] = added["content"]
        kinds[int(added["id"])] = CONTROL if added.get("special") else USER_DEFINED
    n = max(by_id) + 1
    if n > vocab_size:
        raise PtbrError(
            f"{path} has {n} tokens, more than the model's vocabulary ({vocab_size}): not this model's tokenizer"
        )
    missing = [i for i in range(n) if i not in by_id]
    if missing:
        raise PtbrError(f"{path}: token ids {missing[:5]} have no token; llama.cpp needs every id")
    tokens = [by_id[i] for i in range(n)] + [f"<|unused_{i}|>" for i in range(n, vocab_size)]
    types = [kinds.get(i, NORMAL) for i in range(n)] + [UNUSED] * (vocab_size - n)
    eos = next((i for i, t in enumerate(tokens[:n]) if t == eos_token), None)
    if eos is None:
        raise PtbrError(f"{path}: has no end-of-document token {eos_token!r}")
    pad = next((i for i, t in enumerate(tokens[:n]) if t == "<|padding|>"), None)
    merges = [_merge_text(m) for m in data["model"].get("merges", [])]
    return GgufVocab(tokens, types, merges, eos, pad, nfc)
