"""``ptbr export CKPT OUT_DIR --format gguf``: one ``model.gguf`` that llama.cpp loads as ``rwkv6``.

What llama.cpp expects (its converter ``convert_hf_to_gguf.py``, class ``Rwkv6Model``; its loader
``src/models/rwkv6.cpp``; the graph in ``src/models/rwkv6-base.cpp``), and how ptbr's weights map onto it:

* the five token-shift mixes ``time_maa_{w,k,v,r,g}`` as one ``time_mix_lerp_fused`` [5, 1, 1, C] in
  RWKV-LM's order w, k, v, r, g (the order of the LoRA's five outputs, which the graph splits the same way);
* the LoRAs transposed for ``ggml_mul_mat`` (``time_mix_w1`` [5R, C], ``time_mix_w2`` [5, C, R],
  ``time_mix_decay_w1`` [D, C], ``time_mix_decay_w2`` [C, D]); the decay stays raw: the graph computes
  ``exp(-exp(time_decay + lora))`` itself, as ptbr does; ``time_faaaa`` [H, N] is ``time_mix_first``;
* ``ln_x`` is a group norm with one group per head and a fixed epsilon of 64e-5 in the graph, which is
  RWKV-LM's ``1e-5 * head_size_divisor**2`` (ptbr's GROUPNORM_EPS); the LayerNorms read
  ``attention.layer_norm_epsilon`` (1e-5);
* ``rescale_every_n_layers`` = 0: llama.cpp halves the residual stream every n layers only to keep fp16
  activations finite, with the output weights divided to match; its residual stream is fp32, so ptbr writes
  the weights unscaled and no rescaling (the exact model);
* ``output.weight`` is required by the rwkv6 loader (no fallback to the embedding), so a tied head is
  written twice, once as ``token_embd`` and once as ``output``;
* 1-D tensors, the LoRAs, ``time_mix_first`` and the fused mixes stay f32 at every dtype, as llama.cpp's
  converter and ``llama-quantize`` keep them; the embedding, the head and the projection matrices take the
  chosen dtype (q8_0 rows whose length is not a multiple of 32 fall back to f16, as in the converter).

Written with the ``gguf`` package (gguf-py, llama.cpp's own): header, key-values and tensor infos first,
then every tensor streamed in blocks of rows (converted, quantized, written, dropped), so memory holds
one block, never the model. From a checkpoint the fp32 master weights are first exported to a temporary
safetensors file (``ptbr.infer.export.export(fmt="gguf")``, itself streamed, then this module); an existing
export directory is read directly, without torch. The output directory is written under a temporary name and
renamed when complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import gguf
import numpy as np

from ptbr import __version__
from ptbr.errors import PtbrError
from ptbr.fsutil import fsync_file, staged_directory
from ptbr.infer.export_reader import ExportedWeights, is_export_dir
from ptbr.infer.gguf_vocab import PRE_TOKENIZER, TOKENIZER_MODEL, GgufVocab, vocab_from_tokenizer
from ptbr.progress import ProgressBar

ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.RWKV6]
WEIGHTS = "model.gguf"
Q = gguf.GGMLQuantizationType
DTYPES: dict[str, gguf.GGMLQuantizationType] = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}
ALIASES = {"fp32": "f32", "fp16": "f16"}  # the spellings of the safetensors export
FILE_TYPES = {
    Q.F32: gguf.LlamaFileType.ALL_F32,
    Q.F16: gguf.LlamaFileType.MOSTLY_F16,
    Q.BF16: gguf.LlamaFileType.MOSTLY_BF16,
    Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
}
CHUNK = 1 << 20  # elements converted at a time (4 MiB of fp32)
CONTEXT_LENGTH = 1 << 20  # RWKV has no context limit; llama.cpp's converter writes this
LAYER_NORM_EPS = 1e-5
CUDA_HEAD_SIZES = (64, 128)  # ggml-cuda/wkv.cu; the CPU kernel takes any head size
T = gguf.MODEL_TENSOR
# the tensors that take the chosen dtype; every other one stays f32 (see the module docstring)
QUANTIZABLE = {
    T.TOKEN_EMBD,
    T.OUTPUT,
    T.TIME_MIX_KEY,
    T.TIME_MIX_VALUE,
    T.TIME_MIX_RECEPTANCE,
    T.TIME_MIX_GATE,
    T.TIME_MIX_OUTPUT,
    T.CHANNEL_MIX_KEY,
    T.CHANNEL_MIX_VALUE,
    T.CHANNEL_MIX_RECEPTANCE,
}
LERP_ORDER = ("w", "k", "v", "r", "g")  # RWKV-LM's order of the five mixes; llama.cpp's graph reads the same


@dataclass
class TensorSpec:
    """One GGUF tensor: its name, numpy-order shape (ggml's reversed), type, and a producer of float32 blocks
    of whole rows whose concatenation is the tensor."""

    name: str
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType
    blocks: Callable[[], Iterator[np.ndarray]]

    @property
    def nbytes(self) -> int:
        return int(np.prod(gguf.quant_shape_to_byte_shape(self.shape, self.qtype)))


@dataclass
class GgufReport:
    out_dir: Path
    weights: Path
    step: int
    parameters: int
    bytes: int
    seconds: float
    dtype: str


def resolve_dtype(dtype: str) -> str:
    """``f32``, ``f16``, ``bf16``, ``q8_0`` (``fp32``/``fp16`` accepted); anything else is a one-line error."""
    name = ALIASES.get(dtype, dtype)
    if name not in DTYPES:
        raise PtbrError(
            f"--dtype must be one of {', '.join(DTYPES)} for --format gguf, got {dtype!r} (other "
            "llama.cpp types: quantize the f32 or f16 file with llama-quantize)"
        )
    return name


def encode(block: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """A float32 block of whole rows in the file's representation (q8_0: gguf-py's numpy quantizer, which
    follows ggml's ``quantize_row_q8_0_ref``)."""
    return gguf.quants.quantize(np.ascontiguousarray(block, dtype=np.float32), qtype)


def _tensor_name(kind: gguf.MODEL_TENSOR, bid: int | None = None, suffix: str = "weight") -> str:
    base = gguf.TENSOR_NAMES[kind]
    return f"{base.format(bid=bid) if bid is not None else base}.{suffix}"


# ------------------------------------------------------------------------------- the tensor plan
def tensor_plan(
    w: ExportedWeights, n_layer: int, qtype: gguf.GGMLQuantizationType, log: Callable[[str], None] = print
) -> list[TensorSpec]:
    """Every tensor llama.cpp's rwkv6 loader requires, in llama.cpp's names and layouts, none other."""
    specs: list[TensorSpec] = []

    def add(
        kind: gguf.MODEL_TENSOR,
        shape: tuple[int, ...],
        blocks: Callable[[], Iterator[np.ndarray]],
        bid: int | None = None,
        suffix: str = "weight",
    ) -> None:
        t = Q.F32
        if kind in QUANTIZABLE and suffix == "weight" and qtype != Q.F32:
            block_size = gguf.GGML_QUANT_SIZES[qtype][0]
            t = qtype if shape[-1] % block_size == 0 else Q.F16
            if t != qtype:
                log(
                    f"note: {_tensor_name(kind, bid)} rows of {shape[-1]} are not a multiple of {block_size}: "
                    "stored as f16"
                )
        specs.append(TensorSpec(_tensor_name(kind, bid, suffix), shape, t, blocks))

    def streamed(kind: gguf.MODEL_TENSOR, src: str, bid: int | None = None, suffix: str = "weight") -> None:
        add(kind, w.shape(src), lambda: w.row_chunks(src, CHUNK), bid, suffix)

    def small(
        kind: gguf.MODEL_TENSOR, make: Callable[[], np.ndarray], bid: int | None = None, suffix: str = "weight"
    ) -> None:
        shape = make().shape  # small tensors: read twice (plan, write) rather than kept
        add(kind, shape, lambda: iter([np.ascontiguousarray(make())]), bid, suffix)

    def flat(src: str) -> Callable[[], np.ndarray]:
        return lambda: w.read(src).reshape(-1)

    def norm(kind: gguf.MODEL_TENSOR, src: str, bid: int | None = None) -> None:
        small(kind, flat(f"{src}.weight"), bid)
        small(kind, flat(f"{src}.bias"), bid, "bias")

    streamed(T.TOKEN_EMBD, "emb.weight")
    norm(T.TOKEN_EMBD_NORM, "blocks.0.ln0")
    for i in range(n_layer):
        att, ffn = f"blocks.{i}.att", f"blocks.{i}.ffn"
        norm(T.ATTN_NORM, f"blocks.{i}.ln1", i)
        norm(T.ATTN_NORM_2, f"blocks.{i}.ln2", i)
        small(T.TIME_MIX_LERP_X, flat(f"{att}.time_maa_x"), i)
        small(
            T.TIME_MIX_LERP_FUSED,
            lambda att=att: np.stack([w.read(f"{att}.time_maa_{s}").reshape(1, 1, -1) for s in LERP_ORDER]),
            i,
        )
        small(T.TIME_MIX_W1, lambda att=att: w.read(f"{att}.time_maa_w1").T, i)  # [C, 5R] -> [5R, C]
        small(T.TIME_MIX_W2, lambda att=att: w.read(f"{att}.time_maa_w2").transpose(0, 2, 1), i)  # [5, C, R]
        small(T.TIME_MIX_DECAY, flat(f"{att}.time_decay"), i)
        small(T.TIME_MIX_DECAY_W1, lambda att=att: w.read(f"{att}.time_decay_w1").T, i)  # [D, C]
        small(T.TIME_MIX_DECAY_W2, lambda att=att: w.read(f"{att}.time_decay_w2").T, i)  # [C, D]
        small(T.TIME_MIX_FIRST, lambda att=att: w.read(f"{att}.time_faaaa"), i)  # [H, N]
        for kind, lin in (
            (T.TIME_MIX_KEY, "key"),
            (T.TIME_MIX_VALUE, "value"),
            (T.TIME_MIX_RECEPTANCE, "receptance"),
            (T.TIME_MIX_GATE, "gate"),
            (T.TIME_MIX_OUTPUT, "output"),
        ):
            streamed(kind, f"{att}.{lin}.weight", i)
        norm(T.TIME_MIX_LN, f"{att}.ln_x", i)
        small(T.CHANNEL_MIX_LERP_K, flat(f"{ffn}.time_maa_k"), i)
        small(T.CHANNEL_MIX_LERP_R, flat(f"{ffn}.time_maa_r"), i)
        for kind, lin in (
            (T.CHANNEL_MIX_KEY, "key"),
            (T.CHANNEL_MIX_VALUE, "value"),
            (T.CHANNEL_MIX_RECEPTANCE, "receptance"),
        ):
            streamed(kind, f"{ffn}.{lin}.weight", i)
    norm(T.OUTPUT_NORM, "ln_out")
    streamed(T.OUTPUT, "head.weight")  # a tied head reads emb.weight through the export's alias
    return specs


# ------------------------------------------------------------------------------- metadata
@dataclass
class ModelFacts:
    """What the key-values say about the model, taken from the weights' shapes and the export's config."""

    n_layer: int
    n_embd: int
    head_size: int
    dim_ffn: int
    mix_lora: int
    decay_lora: int
    vocab_size: int
    parameters: int

    @classmethod
    def of(cls, w: ExportedWeights) -> ModelFacts:
        layers = {int(n.split(".")[1]) for n in w.names() if n.startswith("blocks.")}
        n_layer = max(layers) + 1 if layers else 0
        if n_layer == 0 or "emb.weight" not in w.names() or "head.weight" not in w.names():
            raise PtbrError(f"{w.path}: not an RWKV-6 export (no blocks, emb.weight or head.weight)")
        vocab, n_embd = w.shape("emb.weight")
        heads, head_size = w.shape("blocks.0.att.time_faaaa")
        stored = {n for n in w.names() if n not in w.aliases or w.aliases[n] not in w.names()}
        return cls(
            n_layer=n_layer,
            n_embd=n_embd,
            head_size=head_size,
            dim_ffn=w.shape("blocks.0.ffn.key.weight")[0],
            mix_lora=w.shape("blocks.0.att.time_maa_w2")[1],
            decay_lora=w.shape("blocks.0.att.time_decay_w1")[1],
            vocab_size=vocab,
            parameters=sum(int(np.prod(w.shape(n))) for n in stored),
        )


def add_metadata(
    writer: gguf.GGUFWriter,
    facts: ModelFacts,
    vocab: GgufVocab,
    config: dict[str, Any],
    qtype: gguf.GGMLQuantizationType,
    name: str | None,
    license_: str | None,
) -> None:
    """Hyperparameters llama.cpp reads for rwkv6, the tokenizer, and the model card."""
    size = gguf.size_label(facts.parameters, 0, 0, 0)
    model_cfg = config.get("model") or {}
    step, tokens = int(config.get("step", 0)), int(config.get("tokens", 0))
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or f"ptbr RWKV-6 {size}")
    writer.add_basename("ptbr-rwkv6")
    writer.add_size_label(size)
    writer.add_license(license_ or "unspecified")
    writer.add_languages(["pt"])
    writer.add_tags(["rwkv6", "ptbr", "portuguese", "pt-BR", "text-generation"])
    writer.add_description(
        f"RWKV-6 (x060) language model trained on Brazilian Portuguese with ptbr "
        f"{config.get('ptbr_version') or __version__}: step {step}, {tokens:,} training tokens, "
        f"dataset {config.get('dataset_hash')}"
    )
    # hyperparameters: what llama_model_rwkv6::load_arch_hparams and the base loader read
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(facts.n_embd)
    writer.add_block_count(facts.n_layer)
    writer.add_feed_forward_length(facts.dim_ffn)
    writer.add_head_count(0)  # required by llama.cpp's base loader, unused by rwkv6
    writer.add_layer_norm_eps(LAYER_NORM_EPS)
    writer.add_wkv_head_size(facts.head_size)
    writer.add_time_mix_extra_dim(facts.mix_lora)
    writer.add_time_decay_extra_dim(facts.decay_lora)
    writer.add_rescale_every_n_layers(0)
    writer.add_token_shift_count(2)  # attention and channel mix each carry one token (the graph asserts 2)
    writer.add_vocab_size(facts.vocab_size)
    writer.add_file_type(FILE_TYPES[qtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    # tokenizer: no BOS is added (ptbr never prepends one); BOS is set to EOS so that llama.cpp's gpt2 default
    # (token 11) never names an ordinary token
    writer.add_tokenizer_model(TOKENIZER_MODEL)
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_bos_token_id(vocab.eos_id)
    if vocab.pad_id is not None:
        writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    # provenance, under ptbr's own namespace
    writer.add_string("ptbr.version", str(config.get("ptbr_version") or __version__))
    writer.add_uint64("ptbr.step", step)
    writer.add_uint64("ptbr.training_tokens", tokens)
    writer.add_string("ptbr.dataset_hash", str(config.get("dataset_hash") or ""))
    writer.add_string("ptbr.tokenizer_sha256", str(config.get("tokenizer_sha256") or ""))
    writer.add_bool("ptbr.tie_embeddings", bool(model_cfg.get("tie_embeddings", False)))
    writer.add_bool("ptbr.reset_state_at_eos", bool(model_cfg.get("reset_state_at_eos", False)))
    writer.add_bool("ptbr.tokenizer_nfc", vocab.nfc)


# ------------------------------------------------------------------------------- writing
class _Streamed:
    """A tensor for ``GGUFWriter.write_tensor_data``: its size up front, its bytes produced block by block
    when written (the writer only needs ``nbytes`` and ``tofile``)."""

    def __init__(self, spec: TensorSpec, bar: ProgressBar) -> None:
        self.spec, self.bar, self.nbytes = spec, bar, spec.nbytes

    def tofile(self, f: BinaryIO) -> None:
        written = 0
        for block in self.spec.blocks():
            data = encode(block, self.spec.qtype)
            data.tofile(f)
            written += data.nbytes
            self.bar.update(self.bar.done_bytes + data.nbytes, self.bar.count + block.size)
        if written != self.nbytes:
            raise RuntimeError(f"{self.spec.name}: wrote {written} bytes, planned {self.nbytes}")


def write_gguf(
    path: Path, specs: list[TensorSpec], metadata: Callable[[gguf.GGUFWriter], None], progress: bool = True
) -> int:
    """Header, key-values and tensor infos, then each tensor streamed; returns the file size."""
    writer = gguf.GGUFWriter(path=None, arch=ARCH)
    metadata(writer)
    for s in specs:
        writer.add_tensor_info(s.name, s.shape, np.dtype(np.float32), s.nbytes, raw_dtype=s.qtype)
    bar = ProgressBar("export gguf", sum(s.nbytes for s in specs), rate_unit="params", enabled=progress)
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for s in specs:
            writer.write_tensor_data(_Streamed(s, bar))  # type: ignore[arg-type]  # duck-typed ndarray
    finally:
        writer.close()
        bar.close()
    fsync_file(path)
    return path.stat().st_size


# ------------------------------------------------------------------------------- the command
def check_request(out_dir: str | Path, dtype: str, overwrite: bool) -> str:
    """The resolved dtype, after the checks that must fail before any work: an unknown dtype, an existing output."""
    dtype = resolve_dtype(dtype)
    if Path(out_dir).exists() and not overwrite:
        raise PtbrError(f"{out_dir} already exists; pass --overwrite to replace it")
    return dtype


def export_gguf(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = "f16",
    tokenizer: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    name: str | None = None,
    license_: str | None = None,
    source_label: str | None = None,
    log: Callable[[str], None] = print,
) -> GgufReport:
    """An export directory (``ptbr export``) -> ``OUT_DIR/model.gguf``, without torch. A checkpoint goes through
    ``ptbr.infer.export.export(fmt="gguf")``, which exports its fp32 master weights first and calls this."""
    dtype = check_request(out_dir, dtype, overwrite)
    qtype = DTYPES[dtype]
    source, out = Path(model_dir), Path(out_dir)
    if not is_export_dir(source):
        raise PtbrError(f"{source} is not an export directory (no config.json naming its weights)")
    t0 = time.perf_counter()
    weights = ExportedWeights(source)
    facts = ModelFacts.of(weights)
    vocab = vocab_from_tokenizer(Path(tokenizer) if tokenizer else source / "tokenizer.json", facts.vocab_size)
    specs = tensor_plan(weights, facts.n_layer, qtype, log)
    with staged_directory(out) as tmp:  # the old OUT_DIR or the whole new one, never a half-written file
        nbytes = write_gguf(
            tmp / WEIGHTS,
            specs,
            lambda wr: add_metadata(wr, facts, vocab, weights.config, qtype, name, license_),
            progress,
        )
    step = int(weights.config.get("step", 0))
    report = GgufReport(out, out / WEIGHTS, step, facts.parameters, nbytes, time.perf_counter() - t0, dtype)
    log(
        f"exported {source_label or source} (step {step}, {facts.parameters:,} parameters) to {report.weights} as "
        f"{dtype} ({nbytes / 2**20:,.1f} MiB) in {report.seconds:.1f} s; run it: llama-completion -m "
        f'{report.weights} -no-cnv -p "..."'
    )
    if facts.head_size not in CUDA_HEAD_SIZES:
        log(f"note: head size {facts.head_size}: llama.cpp runs it on CPU; its CUDA kernel needs 64 or 128")
    return report
