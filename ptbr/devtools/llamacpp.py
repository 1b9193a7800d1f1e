"""llama.cpp itself, through llama-cpp-python, for the tests and benchmarks of the GGUF export.

A thin layer over ``llama_cpp.Llama`` that says what the checks need in ptbr's terms: token ids of a text
(``add_bos`` off, as ptbr never prepends one), the logits of every position or of the last one, greedy
decoding, the bytes of a token, and llama.cpp's own quantizer (``llama_model_quantize``, the code behind
``llama-quantize``). The tokenizer calls go to the C API with buffers sized for any input (the high-level
``detokenize`` truncates pieces longer than 32 bytes).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np


class LlamaCpp:
    """One model in llama.cpp with one sequence; ``reset()`` clears the recurrent state."""

    def __init__(
        self, model: str | Path, *, threads: int = 1, n_ctx: int = 4096, n_batch: int = 512, logits_all: bool = False
    ) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(model),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_ubatch=n_batch,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=logits_all,
            verbose=False,
        )
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = self.llm.n_vocab()

    # ---------------------------------------------------------------- tokenizer
    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """llama.cpp's token ids of ``text``; ``special`` parses special-token texts such as <|endoftext|>."""
        raw = text.encode("utf-8")
        size = len(raw) + 8
        buf = (self._lib.llama_token * size)()
        n = self._lib.llama_tokenize(self.vocab, raw, len(raw), buf, size, False, special)
        if n < 0:
            raise RuntimeError(f"llama_tokenize needs {-n} tokens for {len(raw)} bytes")
        return list(buf[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token (special tokens render only with ``special``)."""
        buf = ctypes.create_string_buffer(1024)
        n = self._lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            raise RuntimeError(f"token {token} is longer than {len(buf)} bytes")
        return buf.raw[:n]

    def detokenize(self, tokens: list[int]) -> str:
        """The pieces joined, as llama-cli prints a stream (llama_detokenize's clean-up pass is not applied)."""
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def detokenize_whole(self, tokens: list[int]) -> str:
        """llama.cpp's ``llama_detokenize`` of the whole list (with its clean-up of spaces, see the README)."""
        arr = (self._lib.llama_token * len(tokens))(*tokens)
        size = 8 * sum(len(self.piece(t)) for t in tokens) + 64
        buf = ctypes.create_string_buffer(size)
        n = self._lib.llama_detokenize(self.vocab, arr, len(tokens), buf, size, False, False)
        return buf.raw[:n].decode("utf-8", errors="replace")

    # ---------------------------------------------------------------- evaluation
    def reset(self) -> None:
        self.llm.reset()

    def eval(self, tokens: list[int]) -> None:
        """Feed ``tokens`` after what was fed since the last ``reset()``."""
        self.llm.eval(tokens)

    def logits(self, tokens: list[int]) -> np.ndarray:
        """[len(tokens), V] float32 logits of every position, from a cleared state (needs ``logits_all``)."""
        self.reset()
        self.eval(tokens)
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32)

    def last_logits(self) -> np.ndarray:
        """[V] logits after the last token fed."""
        ptr = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float32)

    def greedy(self, prompt: list[int], n: int, *, stop: int | None = None) -> list[int]:
        """Up to ``n`` tokens after ``prompt``, each the argmax (the first on ties, as torch.argmax), stopping
        after ``stop`` when given."""
        self.reset()
        self.eval(prompt)
        out: list[int] = []
        for _ in range(n):
            token = int(np.argmax(self.last_logits()))
            if token == stop:
                break
            out.append(token)
            self.eval([token])
        return out


def quantize(src: str | Path, dst: str | Path, ftype: str, threads: int = 1) -> None:
    """llama.cpp's ``llama_model_quantize`` (what ``llama-quantize SRC DST TYPE`` runs), e.g. ftype "Q4_K_M"."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype.upper()}")
    params.nthread = threads
    code = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if code != 0:
        raise RuntimeError(f"llama_model_quantize {src} -> {dst} ({ftype}) failed with {code}")
