"""``ptbr export``: a sharded ZeRO checkpoint -> single-file weights, tensor by tensor, in little memory.

DeepSpeed's ``zero_to_fp32`` loads every rank's optimizer state (fp32 master weights and both Adam
moments) and concatenates it in RAM: several times the model size. Here each rank's optimizer file is
memory-mapped (``torch.load(mmap=True)``), only the fp32 master-weight fragments are read, in chunks,
cast to the output dtype and written straight to their place in the output file (``os.pwrite``); the
pages read are given back at once (``madvise(MADV_DONTNEED)``). Peak memory is the interpreter plus a
chunk, whatever the model size and the number of ranks.

Layouts read (DeepSpeed 0.19, ``ptbr.checkpoint.layout`` names the files):

* ZeRO 1/2 (and bf16 ZeRO-1): each parameter group is one flat fp32 vector, cut into equal partitions,
  one per rank (``single_partition_of_fp32_groups``); parameters lie in ``param_shapes`` order, each
  followed by its alignment padding (``param_alignment_paddings``).
* ZeRO 3: every parameter is cut into ``ceil(numel / world)`` elements per rank; a rank's partitions
  lie one after the other in its flat sub-groups (``fp32_flat_groups``), in ``param_shapes`` order.

Output: ``model.safetensors`` (RWKV-LM parameter names; a tied head is stored once, as ``emb.weight``)
or, with ``format="rwkv"``, ``model.pth`` for the ``rwkv`` pip runtime (a separate ``head.weight``);
plus ``config.json`` and ``tokenizer.json``. Written into a temporary directory, fsynced, renamed.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ptbr import __version__
from ptbr.checkpoint import layout
from ptbr.errors import CheckpointError, PtbrError
from ptbr.fsutil import atomic_write_text, staged_directory
from ptbr.progress import ProgressBar

if TYPE_CHECKING:
    from ptbr.infer.gguf import GgufReport

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
FORMATS = ("safetensors", "rwkv", "gguf")
WEIGHTS = {"safetensors": "model.safetensors", "rwkv": "model.pth"}
CHUNK = 1 << 22  # elements read, cast and written at a time (16 MiB of fp32)
_MADV_DONTNEED = 4
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Fragment:
    rank: int
    source: tuple[int, int]  # (flat tensor index in the rank's list, element offset in it)
    dest: int  # element offset in the parameter
    numel: int


@dataclass
class ParamPlan:
    name: str
    shape: tuple[int, ...]
    fragments: list[Fragment] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class ExportReport:
    out_dir: Path
    weights: Path
    step: int
    parameters: int
    bytes: int
    seconds: float


# ------------------------------------------------------------------------------- locating the checkpoint
def resolve(target: str, run_dir: str | None = None) -> layout.Checkpoint:
    """A run directory (its newest complete checkpoint), a checkpoint directory, or a step of ``run_dir``."""
    if target.isdigit():
        if not run_dir:
            raise CheckpointError(f"a step number ({target}) needs --run-dir to say which run it belongs to")
        matches = [c for c in layout.list_checkpoints(Path(run_dir) / "checkpoints") if c.step == int(target)]
        complete = [c for c in matches if not c.problems()]
        if not complete:
            raise CheckpointError(
                f"{run_dir} has no complete checkpoint of step {target}"
                + (f" ({'; '.join(matches[-1].problems())})" if matches else "")
            )
        return complete[-1]
    path = Path(target)
    ckpt = layout.parse_checkpoint(path)
    if ckpt is not None and path.is_dir():
        problems = ckpt.problems()
        if problems:
            raise CheckpointError(f"{path} is not a complete checkpoint: {'; '.join(problems)}")
        return ckpt
    root = path / "checkpoints"
    if root.is_dir():
        newest = layout.newest_usable(root, lambda _m: None)
        if newest is None:
            raise CheckpointError(f"{root} holds no complete checkpoint yet")
        return newest
    raise CheckpointError(f"{path} is neither a run directory nor a checkpoint directory (step_XXXXXXXX)")


def _run_dir_of(ckpt: layout.Checkpoint) -> Path:
    return ckpt.path.parent.parent


def model_config_of(ckpt: layout.Checkpoint) -> dict[str, Any]:
    """The model config the checkpoint was trained with (recorded with it, else the run's config.json)."""
    state = ckpt.state()
    if "model" in state:
        return dict(state["model"])
    cfg = _run_dir_of(ckpt) / "config.json"
    if cfg.is_file():
        return dict(json.loads(cfg.read_text())["model"])
    raise CheckpointError(f"{ckpt.path} records no model config and {cfg} is missing")


# ------------------------------------------------------------------------------- reading DeepSpeed's files
def _load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as exc:  # a damaged file: one line, not a pickle traceback
        raise CheckpointError(f"cannot read {path}: {' '.join(str(exc).split())[:160]}") from None


def _flat_groups(optim: dict[str, Any]) -> tuple[int, list[torch.Tensor]]:
    osd = optim["optimizer_state_dict"]
    stage = int(osd.get("zero_stage", 0))
    key = "fp32_flat_groups" if stage == 3 else "single_partition_of_fp32_groups"
    if key not in osd:
        raise CheckpointError(f"unsupported optimizer state (ZeRO stage {stage}, no {key})")
    return stage, list(osd[key])


def plan_params(
    param_shapes: list[dict[str, Any]], stage: int, world: int, flat_sizes: list[int], paddings: list[list[int]] | None
) -> list[ParamPlan]:
    """Where every element of every parameter lies in the ranks' flat fp32 tensors."""
    plans: list[ParamPlan] = []
    if stage == 3:
        starts = [0]
        for n in flat_sizes:
            starts.append(starts[-1] + n)
        offset = 0
        for group in param_shapes:
            for name, shape in group.items():
                p = ParamPlan(name, tuple(shape))
                part = math.ceil(p.numel / world)
                flat = max(i for i in range(len(flat_sizes)) if starts[i] <= offset) if flat_sizes else 0
                for rank in range(world):
                    n = max(0, min(part, p.numel - rank * part))
                    if n:
                        p.fragments.append(Fragment(rank, (flat, offset - starts[flat]), rank * part, n))
                plans.append(p)
                offset += part
        if offset != sum(flat_sizes):
            raise CheckpointError(
                f"ZeRO-3 partitions hold {sum(flat_sizes)} elements per rank, the parameters "
                f"need {offset}: the checkpoint does not match its parameter shapes"
            )
        return plans
    for g, group in enumerate(param_shapes):
        part = flat_sizes[g]  # every rank holds an equal partition of the group's flat vector
        offset = 0
        for i, (name, shape) in enumerate(group.items()):
            p = ParamPlan(name, tuple(shape))
            for rank in range(world):
                lo, hi = max(offset, rank * part), min(offset + p.numel, (rank + 1) * part)
                if lo < hi:
                    p.fragments.append(Fragment(rank, (g, lo - rank * part), lo - offset, hi - lo))
            plans.append(p)
            offset += p.numel + (paddings[g][i] if paddings else 0)
        if offset > part * world:
            raise CheckpointError(f"parameter group {g} needs {offset} elements, the ranks hold {part * world}")
    return plans


def _release(t: torch.Tensor) -> None:
    """Give the pages of a memory-mapped slice back to the kernel (re-read from the file if touched again)."""
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    start -= start % _PAGE
    end += -end % _PAGE
    ctypes.CDLL(None).madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


# ------------------------------------------------------------------------------- safetensors, written in place
def safetensors_header(
    params: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype, metadata: dict[str, str]
) -> tuple[bytes, dict[str, int]]:
    """The file header and each tensor's byte offset in the data section."""
    item = torch.empty((), dtype=dtype).element_size()
    header: dict[str, Any] = {"__metadata__": metadata}
    offsets, pos = {}, 0
    for name, shape in params:
        n = math.prod(shape) * item
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [pos, pos + n]}
        offsets[name] = pos
        pos += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, offsets


def write_weights(
    ckpt: layout.Checkpoint, path: Path, dtype: torch.dtype, metadata: dict[str, str], progress: bool = True
) -> tuple[int, int, dict[str, str]]:
    """Write ``model.safetensors`` at ``path``; returns (parameters, bytes, shared {alias: name})."""
    model_files, optim_files = ckpt.model_state_files(), ckpt.optim_state_files()
    if not model_files or not optim_files:
        raise CheckpointError(f"{ckpt.path} holds no DeepSpeed model/optimizer states")
    model_states = _load(model_files[0])
    param_shapes = model_states["param_shapes"]
    shared = {alias: name for alias, name in (model_states.get("shared_params") or {}).items()}
    del model_states
    world = len(optim_files)
    first = _load(optim_files[0])
    stage, flats = _flat_groups(first)
    paddings = first["optimizer_state_dict"].get("param_alignment_paddings")
    plans = plan_params(param_shapes, stage, world, [f.numel() for f in flats], paddings)
    del first, flats
    gc.collect()

    header, offsets = safetensors_header([(p.name, p.shape) for p in plans], dtype, metadata)
    item = torch.empty((), dtype=dtype).element_size()
    total = sum(p.numel for p in plans)
    bar = ProgressBar(f"export {ckpt.tag}", total * item, rate_unit="params", enabled=progress)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, header)
        os.ftruncate(fd, len(header) + total * item)
        for rank, file in enumerate(optim_files):  # one rank's file mapped at a time
            state = _load(file)
            _, flats = _flat_groups(state)
            for p in plans:
                for frag in (f for f in p.fragments if f.rank == rank):
                    flat, src = frag.source
                    for a in range(0, frag.numel, CHUNK):
                        n = min(CHUNK, frag.numel - a)
                        source = flats[flat].narrow(0, src + a, n)
                        out = source.to(dtype).contiguous()
                        os.pwrite(
                            fd,
                            out.view(torch.uint8).numpy().tobytes(),
                            len(header) + offsets[p.name] + (frag.dest + a) * item,
                        )
                        _release(source)
                        bar.update(bar.done_bytes + n * item, bar.count + n)
            del state, flats
            gc.collect()
        os.fsync(fd)
    finally:
        os.close(fd)
        bar.close()
    return total, len(header) + total * item, shared


def write_rwkv_pth(safetensors_path: Path, path: Path, shared: dict[str, str]) -> None:
    """The ``rwkv`` runtime's .pth: a plain state dict, a separate ``head.weight`` for a tied head."""
    from safetensors import safe_open

    state = {}
    with safe_open(str(safetensors_path), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            state[name] = f.get_tensor(name)
    for alias, name in shared.items():
        state[alias] = state[name].clone()
    torch.save(state, path)


# ------------------------------------------------------------------------------- the command
def export_gguf_of(
    target: str,
    out_dir: str | Path,
    *,
    dtype: str,
    run_dir: str | None,
    tokenizer: str | None,
    overwrite: bool,
    progress: bool,
    log: Callable[[str], None],
    name: str | None,
    license_: str | None,
) -> GgufReport:
    """llama.cpp's single file (``ptbr.infer.gguf``): an export directory is converted as it is; a checkpoint's
    fp32 master weights are exported to a temporary directory next to ``out_dir`` first."""
    from ptbr.infer.export_reader import is_export_dir
    from ptbr.infer.gguf import check_request, export_gguf

    options = {
        "dtype": dtype,
        "overwrite": overwrite,
        "progress": progress,
        "log": log,
        "name": name,
        "license_": license_,
    }
    if is_export_dir(Path(target)):
        return export_gguf(target, out_dir, tokenizer=tokenizer, **options)
    check_request(out_dir, dtype, overwrite)  # before the fp32 export, not after it
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.fp32-") as tmp:
        fp32 = export(
            target,
            Path(tmp) / "fp32",
            dtype="fp32",
            run_dir=run_dir,
            tokenizer=tokenizer,
            progress=progress,
            log=lambda _msg: None,
        )
        return export_gguf(
            fp32.out_dir,
            out,
            source_label=str(json.loads((fp32.out_dir / "config.json").read_text())["checkpoint"]),
            **options,
        )


def export(
    target: str,
    out_dir: str | Path,
    *,
    dtype: str = "bf16",
    fmt: str = "safetensors",
    run_dir: str | None = None,
    tokenizer: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    name: str | None = None,
    license_: str | None = None,
) -> ExportReport | GgufReport:
    """``name`` and ``license_``: the model card of a GGUF export (``fmt="gguf"``)."""
    if fmt == "gguf":
        return export_gguf_of(
            target,
            out_dir,
            dtype=dtype,
            run_dir=run_dir,
            tokenizer=tokenizer,
            overwrite=overwrite,
            progress=progress,
            log=log,
            name=name,
            license_=license_,
        )
    if dtype not in DTYPES:
        raise PtbrError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if fmt not in FORMATS:
        raise PtbrError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise PtbrError(f"{out} already exists; pass --overwrite to replace it")
    t0 = time.perf_counter()
    ckpt = resolve(target, run_dir)
    state = ckpt.state()
    model_cfg = model_config_of(ckpt)
    tok_src = Path(tokenizer) if tokenizer else _run_dir_of(ckpt) / "tokenizer.json"
    if not tok_src.is_file():
        raise PtbrError(f"no tokenizer at {tok_src}: pass --tokenizer PATH (the tokenizer.json of the dataset)")

    with staged_directory(out) as tmp:
        config = {
            "model": model_cfg,
            "vocab_size": model_cfg["vocab_size"],
            "dtype": dtype,
            "format": fmt,
            "weights": WEIGHTS[fmt],
            "step": int(state["step"]),
            "tokens": int(state["tokens"]),
            "samples": int(state["samples"]),
            "tokenizer_sha256": state.get("tokenizer_sha256"),
            "dataset_hash": state.get("fingerprint", {}).get("dataset"),
            "checkpoint": str(ckpt.path),
            "ptbr_version": __version__,
        }
        metadata = {"format": "pt", "ptbr": json.dumps({k: config[k] for k in ("step", "tokens", "dtype")})}
        st_path = tmp / WEIGHTS["safetensors"]
        params, nbytes, shared = write_weights(ckpt, st_path, DTYPES[dtype], metadata, progress)
        config["tied"] = shared
        if fmt == "rwkv":
            write_rwkv_pth(st_path, tmp / WEIGHTS["rwkv"], shared)
            st_path.unlink()
            nbytes = (tmp / WEIGHTS["rwkv"]).stat().st_size
        shutil.copyfile(tok_src, tmp / "tokenizer.json")
        atomic_write_text(tmp / "config.json", json.dumps(config, indent=2) + "\n")
    report = ExportReport(out, out / WEIGHTS[fmt], int(state["step"]), params, nbytes, time.perf_counter() - t0)
    log(
        f"exported {ckpt.path} (step {report.step}, {params:,} parameters) to {report.weights} as {dtype} "
        f"({nbytes / 2**20:,.1f} MiB) in {report.seconds:.1f} s"
    )
    return report
