"""Byte-level BPE tokenizer: training, loading, and the facts the shards depend on.

Byte-level BPE with every one of the 256 byte symbols in the initial alphabet can encode any
text, so no unknown token exists. NFC normalisation makes composed and decomposed accents
("ç" vs "c" + U+0327) the same tokens. Special tokens are added first, so their ids are stable
(<|endoftext|> = 0, <|padding|> = 1) and recorded in tokenizer.json's ``added_tokens``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptbr.data.hashing import sha256_bytes
from ptbr.errors import DataError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)
BYTE_ALPHABET = 256


@dataclass(frozen=True)
class TokenizerInfo:
    """What a dataset records about the tokenizer it was built with."""

    path: str
    sha256: str
    vocab_size: int
    eos_token: str
    eos_id: int
    special_tokens: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "vocab_size": self.vocab_size,
            "eos_token": self.eos_token,
            "eos_id": self.eos_id,
            "special_tokens": dict(self.special_tokens),
        }


def new_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE pipeline (NFC -> byte-level pre-tokenizer -> BPE)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(
    documents: Iterable[str],
    *,
    vocab_size: int,
    min_frequency: int = 2,
    special_tokens: Iterable[str] = SPECIAL_TOKENS,
    show_progress: bool = False,
) -> Tokenizer:
    """Train byte-level BPE on ``documents`` (any iterable of strings, consumed once)."""
    from tokenizers import pre_tokenizers, trainers

    specials = list(dict.fromkeys(special_tokens))
    if EOS_TOKEN not in specials:
        specials.insert(0, EOS_TOKEN)
    minimum = BYTE_ALPHABET + len(specials)
    if vocab_size < minimum:
        raise DataError(
            f"--vocab-size {vocab_size} is too small: byte-level BPE needs at least "
            f"{minimum} (256 bytes + {len(specials)} special tokens)"
        )
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        show_progress=show_progress,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(documents, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path, eos_token: str = EOS_TOKEN) -> tuple[Tokenizer, TokenizerInfo]:
    """Load tokenizer.json; missing, unreadable or EOS-less files are one-line DataErrors."""
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer not found: {path} (create one with 'ptbr tokenizer train')")
    data = path.read_bytes()
    try:
        tok = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise DataError(f"{path}: not a valid tokenizer.json ({str(exc).splitlines()[0][:120]})") from None
    eos_id = tok.token_to_id(eos_token)
    if eos_id is None:
        raise DataError(f"{path}: has no end-of-document token {eos_token!r} (see --eos-token)")
    specials = {}
    try:
        for entry in json.loads(data).get("added_tokens", []):
            if entry.get("special"):
                specials[entry["content"]] = int(entry["id"])
    except (ValueError, KeyError, TypeError):
        pass
    meta = TokenizerInfo(
        path=str(path),
        sha256=sha256_bytes(data),
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        eos_token=eos_token,
        eos_id=eos_id,
        special_tokens=specials,
    )
    return tok, meta


@dataclass
class TokenizerReport:
    """What :func:`train_tokenizer_from_corpus` read and wrote."""

    tokenizer: TokenizerInfo
    stats: Any  # ptbr.data.corpus.ReadStats
    files: int


def train_tokenizer_from_corpus(
    inputs: list[str],
    output: str | Path,
    *,
    vocab_size: int,
    min_frequency: int = 2,
    extra_special_tokens: Iterable[str] = (),
    text_field: str = "text",
    txt_docs: str = "file",
    max_bytes: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> TokenizerReport:
    """Train on the documents of ``inputs`` (files or directories) and write ``output`` atomically.

    Stops reading after ``max_bytes`` raw input bytes (a sample is enough for BPE). An existing
    output without ``overwrite``, no documents, or an unreadable input is a one-line DataError.
    """

    from ptbr.data.corpus import ReadStats, discover_inputs, iter_documents
    from ptbr.fsutil import atomic_write_text
    from ptbr.progress import ProgressBar

    out = Path(output)
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists; pass --overwrite to replace it")
    files = discover_inputs(inputs)
    total = sum(f.size for f in files)
    stats = ReadStats()
    bar = ProgressBar("tokenizer: reading", min(total, max_bytes or total), rate_unit="docs", enabled=progress)
    failure: list[BaseException] = []

    def documents():
        try:
            for text in iter_documents(files, stats, text_field=text_field, txt_docs=txt_docs):
                yield text
                bar.update(stats.bytes_read, stats.documents)
                if max_bytes is not None and stats.bytes_read >= max_bytes:
                    break
        except BaseException as exc:  # surfaces through the Rust trainer as a generic error
            failure.append(exc)
            raise

    try:
        tok = train_tokenizer(
            documents(),
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[*SPECIAL_TOKENS, *extra_special_tokens],
            show_progress=progress and sys.stderr.isatty(),
        )
    except Exception:
        if failure:
            raise failure[0] from None
        raise
    bar.close()
    if stats.documents == 0:
        raise DataError(f"no documents found in {len(files)} input file(s) (all empty?)")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, tok.to_str())
    _, meta = load_tokenizer(out)
    return TokenizerReport(meta, stats, len(files))
