"""The GGUF export checked by llama.cpp itself (llama-cpp-python, built from source by tools/setup_env.sh), on
random weights (the file layout and the tokenizer do not depend on training): the tensors and key-values
llama.cpp's rwkv6 loader reads, per dtype; logits against ptbr's forward; q8_0 byte-equal to llama.cpp's own
quantizer; llama-quantize's other types; the tokenizer battery; one-line errors. The trained-model checks are
tests/system/test_gguf_trained.py. Head size 64: llama.cpp's CPU kernel takes any head size, its CUDA kernel only
64 or 128."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.gguf import (
    EOS,
    MODEL,
    PROMPTS,
    export,
    gguf_of,
    ptbr,
    ptbr_logits,
    rel_rms,
)

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by tools/setup_env.sh")

from ptbr.devtools.llamacpp import LlamaCpp, quantize  # noqa: E402

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by tools/setup_env.sh")


# ------------------------------------------------------------------------------- fast tier: random weights
@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory) -> Path:
    from ptbr.data.tokenizer import train_tokenizer
    from ptbr.devtools.sample_text import portuguese_documents

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    path.write_text(train_tokenizer(portuguese_documents(300, seed=11), vocab_size=MODEL["vocab_size"]).to_str())
    return path


def random_export(root: Path, tokenizer: Path, *, tied: bool = False) -> Path:
    """An export directory as ``ptbr export --dtype fp32`` writes it, with random weights of a realistic scale
    (every matrix non-zero, unlike a fresh initialisation)."""
    from safetensors.torch import save_file

    from ptbr.model import RWKV6, RWKV6Config

    cfg = RWKV6Config(**MODEL, tie_embeddings=tied)
    torch.manual_seed(0)
    model = RWKV6(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.05))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "head.weight")}
    root.mkdir(parents=True)
    save_file(state, str(root / "model.safetensors"))
    (root / "tokenizer.json").write_bytes(tokenizer.read_bytes())
    config = {
        "model": cfg.model_dump(),
        "vocab_size": cfg.vocab_size,
        "dtype": "fp32",
        "format": "safetensors",
        "weights": "model.safetensors",
        "step": 7,
        "tokens": 12345,
        "samples": 100,
        "tokenizer_sha256": "t" * 8,
        "dataset_hash": "d" * 16,
        "ptbr_version": "0.1.0",
        "tied": {"head.weight": "emb.weight"} if tied else {},
    }
    (root / "config.json").write_text(json.dumps(config))
    return root


@pytest.fixture(scope="module")
def random_model(tmp_path_factory, tokenizer_json) -> Path:
    return random_export(tmp_path_factory.mktemp("random") / "export", tokenizer_json)


def test_the_file_holds_what_the_rwkv6_loader_reads(random_model, tmp_path):
    import gguf

    expected = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.RWKV6]}
    expected -= {gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, f"TIME_MIX_LERP_{s}")] for s in "WKVRG"}  # fused
    kept_f32 = {
        "time_mix_first",
        "time_mix_w1",
        "time_mix_w2",
        "time_mix_decay_w1",
        "time_mix_decay_w2",
        "time_mix_lerp_fused",
    }
    for dtype, qtype in (("f32", "F32"), ("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")):
        reader = gguf.GGUFReader(gguf_of(random_model, tmp_path / dtype, dtype))
        names = {t.name for t in reader.tensors}
        generic = {n.rsplit(".", 1)[0].replace(".0.", ".{bid}.").replace(".1.", ".{bid}.") for n in names}
        assert generic == expected and len(names) == 6 + 2 * 24  # nothing llama.cpp would not count
        for t in reader.tensors:
            base = t.name.rsplit(".", 1)[0].split(".")[-1]
            stays_f32 = t.name.endswith(".bias") or len(t.shape) == 1 or base in kept_f32
            assert t.tensor_type.name == ("F32" if stays_f32 else qtype), t.name
        shapes = {t.name: [int(n) for n in t.shape] for t in reader.tensors}  # ggml order
        assert shapes["blk.0.time_mix_lerp_fused.weight"] == [128, 1, 1, 5]
        assert shapes["blk.0.time_mix_w1.weight"] == [128, 40] and shapes["blk.0.time_mix_w2.weight"] == [8, 128, 5]
        assert shapes["blk.0.time_mix_first.weight"] == [64, 2] and shapes["output.weight"] == [128, 512]
        kv = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.t")}
        assert kv["general.architecture"] == "rwkv6" and kv["rwkv6.wkv.head_size"] == 64
        assert kv["rwkv6.rescale_every_n_layers"] == 0 and kv["rwkv6.feed_forward_length"] == 448
        assert kv["rwkv6.time_mix_extra_dim"] == 8 and kv["rwkv6.time_decay_extra_dim"] == 8
        assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "gpt-2"
        assert kv["tokenizer.ggml.eos_token_id"] == 0 and kv["tokenizer.ggml.add_bos_token"] is False
        assert kv["ptbr.step"] == 7 and kv["ptbr.training_tokens"] == 12345 and kv["ptbr.dataset_hash"] == "d" * 16
        assert kv["general.license"] == "unspecified" and kv["general.languages"] == ["pt"]
        llm = LlamaCpp(tmp_path / dtype / "model.gguf")
        assert llm.n_vocab == 512 and llm.llm.metadata["ptbr.step"] == "7"


def test_random_weights_give_ptbr_logits_in_llama_cpp(random_model, tmp_path):
    from ptbr.infer.model_io import load_model

    lm = load_model(random_model, "cpu")
    llm = LlamaCpp(gguf_of(random_model, tmp_path / "g", "f32"), logits_all=True)
    worst = max(
        rel_rms(llm.logits(t), ptbr_logits(lm, t))
        for t in (lm.tokenizer.encode(p, add_special_tokens=False).ids for p in PROMPTS)
    )
    print(f"random weights: f32 relative RMS of the logits, worst prompt {worst:.2e}")
    assert worst < 1e-3


def test_q8_0_is_llama_cpps_own_quantization_and_llama_quantize_works_on_the_export(random_model, tmp_path):
    import gguf

    f32 = gguf_of(random_model, tmp_path / "f32", "f32")
    ours = gguf.GGUFReader(gguf_of(random_model, tmp_path / "q8", "q8_0"))
    quantize(f32, tmp_path / "llama-q8_0.gguf", "Q8_0")
    theirs = {t.name: t for t in gguf.GGUFReader(tmp_path / "llama-q8_0.gguf").tensors}
    for t in ours.tensors:
        if t.tensor_type.name == "Q8_0":  # llama-quantize keeps the same tensors f32 as the export does
            assert theirs[t.name].tensor_type.name == "Q8_0" and np.array_equal(t.data, theirs[t.name].data), t.name
    quantize(f32, tmp_path / "q4.gguf", "Q4_K_M")  # a type the export leaves to llama-quantize
    llm = LlamaCpp(tmp_path / "q4.gguf", logits_all=True)
    assert np.isfinite(llm.logits(llm.tokenize(PROMPTS[0]))).all()


# The battery: where ptbr's NFC normaliser changes the text, llama.cpp (which normalises nothing) sees other
# code points; every other string must give the same tokens.
BATTERY = [
    "Ação, coração, informação: não há exceção à regra. Pôr, pôde, avó, avô, açúcar, pão, órgão, Itaú.",
    "São Paulo, Brasília, Florianópolis, Goiânia, Macapá, João Pessoa e Ribeirão Preto",
    "ÀÁÂÃÇÉÊÍÓÔÕÚÜ àáâãçéêíóôõúü ñ ß œ",
    "Emoji: 😀 👍🏽 🇧🇷 ❤️ 👨‍👩‍👧‍👦 no fim😀",
    "R$ 1.234.567,89; 3,14159; 2024-03-15 às 10h30; 100%; 1e-5; +55 (11) 98765-4321; 1º, 2ª, ½, ²",
    "   três espaços\n\n\nquatro linhas\t\ttabs  \n  \r\n fim  ",
    "def soma(a, b):\n    return a + b  # comentário\n\nprint(soma(1, 2))\n",
    "https://www.gov.br/saude/pt-br/assuntos?id=42&x=y#topo e fulano.de_tal@exemplo.com.br",
    "d'água, copo-d'água, it's, we're, they'll, I'd, 'S 'T",
    "ＡＢＣ　全角, ﬁm, ㎏, 中文 и кириллица, العربية",
    "fim do documento" + EOS + "início do próximo",
    EOS,
    " ",
    "\n",
    "a",
]

NFC_CHANGES = [
    unicodedata.normalize("NFD", "ação, coração, São Paulo, pôr, avó"),  # decomposed accents
    "\u2126 e \u212b e \u212a",  # OHM, ANGSTROM and KELVIN SIGN: singletons NFC replaces (Ω, Å, K)
]


def test_tokenization_is_ptbrs_on_a_battery(random_model, tmp_path):
    from tokenizers import Tokenizer

    from ptbr.devtools.sample_text import portuguese_documents

    ours = Tokenizer.from_file(str(random_model / "tokenizer.json"))
    llm = LlamaCpp(gguf_of(random_model, tmp_path / "g", "f32"))
    for text in BATTERY + portuguese_documents(50, seed=3):
        assert unicodedata.normalize("NFC", text) == text
        ids = ours.encode(text, add_special_tokens=False).ids
        assert llm.tokenize(text) == ids, text
        assert llm.detokenize(ids) == ours.decode(ids), text  # the pieces, as llama-cli streams them
    for text in NFC_CHANGES:  # the named difference, and its remedy
        ids = ours.encode(text, add_special_tokens=False).ids
        assert llm.tokenize(text) != ids and llm.tokenize(unicodedata.normalize("NFC", text)) == ids
    # special-token text is parsed only when asked (llama-cli and llama-server do; the Python API's default not)
    assert llm.tokenize(EOS) == [0] and llm.tokenize(EOS, special=False) != [0]
    # llama_detokenize (one call for a whole list) also applies gpt2's clean-up of spaces before punctuation
    ids = ours.encode("Olá , mundo . Tudo bem ?", add_special_tokens=False).ids
    assert llm.detokenize(ids) == "Olá , mundo . Tudo bem ?" and llm.detokenize_whole(ids) == "Olá, mundo. Tudo bem?"


@pytest.mark.slow  # several seconds of its own: in tests/unit, out of -m "not slow"
def test_bad_inputs_are_one_line(random_model, tmp_path):
    def error_of(*args: str) -> str:
        proc = ptbr(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("ptbr: error:")]
        return line

    out = tmp_path / "o"
    assert "--dtype must be one of f32, f16, bf16, q8_0 for --format gguf, got 'q4_0'" in error_of(
        "export", str(random_model), str(out), "--format", "gguf", "--dtype", "q4_0"
    )
    exists = export(random_model, tmp_path / "exists", "--format", "gguf")
    assert "already exists; pass --overwrite" in error_of("export", str(random_model), str(exists), "--format", "gguf")
    broken = tmp_path / "run" / "checkpoints" / "step_00000006"
    broken.mkdir(parents=True)
    assert "not a complete checkpoint" in error_of("export", str(broken), str(out), "--format", "gguf")
    assert "holds no complete checkpoint yet" in error_of("export", str(tmp_path / "run"), str(out), "--format", "gguf")
    (random_model.parent / "bad").mkdir()
    for f in ("config.json", "tokenizer.json"):
        (random_model.parent / "bad" / f).write_bytes((random_model / f).read_bytes())
    assert "model.safetensors is missing" in error_of(
        "export", str(random_model.parent / "bad"), str(out), "--format", "gguf"
    )
    assert not out.exists() and not list(tmp_path.glob(".o.tmp-*"))
    import gguf

    export(random_model, exists, "--format", "gguf", "--dtype", "q8_0", "--overwrite")
    assert gguf.GGUFReader(exists / "model.gguf").fields["general.file_type"].contents() == 7  # MOSTLY_Q8_0
