"""Training configuration: one YAML file, typed and validated, from which everything is derived.

The DeepSpeed JSON config is generated from these sections (``ptbr.train.ds_config``), so there is
no second hand-written file to keep in sync; a raw ``deepspeed:`` block may override keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ptbr.config import StrictModel, apply_overrides, load_yaml, validate
from ptbr.errors import ConfigError
from ptbr.model.config import RWKV6Config, model_spec


class SourceSpec(StrictModel):
    """One published dataset of a mixture and its share of the training samples."""

    source: str = Field(description="s3://bucket/prefix or a local directory of published shards")
    weight: float = Field(gt=0, description="relative share of the training samples (normalised over sources)")
    name: str | None = Field(default=None, description="label in metrics and plots (default: from the source)")

    def label(self) -> str:
        if self.name:
            return self.name
        parts = [p for p in self.source.replace("s3://", "").rstrip("/").split("/") if p]
        return "_".join(parts[-2:]) if len(parts) > 1 else parts[-1]


class DataConfig(StrictModel):
    source: str | None = Field(
        default=None,
        description="s3://bucket/prefix or a local directory of published "
        "shards (or data.sources for a weighted mixture)",
    )
    sources: list[SourceSpec] | None = Field(
        default=None, description="a weighted mixture of published datasets sharing tokenizer and seq_len"
    )
    cache_dir: str = Field(
        default="~/.cache/ptbr/streaming",
        description="root of the local shard cache (one sub-directory per dataset version); "
        "~ and $VARIABLES are expanded on each node",
    )
    seq_len: int = Field(gt=0, description="must equal the shards' seq_len")
    shuffle: bool = True
    shuffle_algo: str = "py1e"
    num_canonical_nodes: int | None = Field(
        default=None, gt=0, description="fix it to keep the sample order across world sizes"
    )
    num_workers: int = Field(default=2, ge=0)
    predownload: int | None = Field(default=None, gt=0)
    val_split: str = "val"
    train_split: str = "train"
    download_retry_s: float = Field(
        default=300.0,
        ge=0,
        description="keep retrying a failing shard download for at least this long "
        "(streaming's backoff doubles: up to about twice as long)",
    )
    download_timeout_s: float = Field(default=60.0, gt=0, description="read timeout of one download attempt")

    @model_validator(mode="before")
    @classmethod
    def _source_of_a_mixture(cls, data: Any) -> Any:
        """With ``sources``, ``source`` names the first (messages, the tokenizer copy: all share the tokenizer)."""
        if isinstance(data, dict) and data.get("sources") and not data.get("source"):
            first = data["sources"][0]
            if isinstance(first, dict) and "source" in first:
                data = {**data, "source": first["source"]}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.sources:
            if self.source != self.sources[0].source:
                raise ValueError("set either source or sources, not both (source must be the first of sources)")
            labels = [s.label() for s in self.sources]
            if len(set(labels)) != len(labels):
                raise ValueError(f"sources need distinct names (got {labels}); set name: for each")
        elif self.source is None:
            raise ValueError("no data: set data.source (one dataset) or data.sources (a weighted mixture)")
        return self

    def mixture(self) -> list[SourceSpec]:
        """The sources with their weights (one source of weight 1 without a mixture)."""
        return list(self.sources) if self.sources else [SourceSpec(source=str(self.source), weight=1.0)]

    @property
    def mixed(self) -> bool:
        return bool(self.sources) and len(self.sources) > 1

    def cache_path(self) -> str:
        """``cache_dir`` with ``~`` and environment variables expanded here (e.g. ``$SLURMD_NODENAME``: one
        cache per node even where the nodes share a file system)."""
        return os.path.expandvars(os.path.expanduser(self.cache_dir))


class OptimConfig(StrictModel):
    lr: float = Field(default=6e-4, gt=0)
    min_lr: float = Field(default=6e-5, ge=0)
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = Field(default=1e-8, gt=0)
    weight_decay: float = Field(default=0.1, ge=0)
    warmup_steps: int = Field(default=100, ge=0)
    decay_steps: int | None = Field(default=None, gt=0, description="cosine length; default: train.max_steps")
    grad_clip: float = Field(default=1.0, ge=0, description="0 disables clipping")
    time_decay_lr_scale: float = Field(default=2.0, gt=0, description="RWKV-LM: 2x LR on time_decay")
    l2wrap: bool = Field(default=True, description="RWKV-LM's L2Wrap logit regulariser")

    @model_validator(mode="after")
    def _check(self) -> OptimConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        return self


class BatchConfig(StrictModel):
    micro_batch_size: int = Field(default=8, gt=0, description="sequences per device per micro-step")
    grad_accum: int | None = Field(default=None, gt=0)
    global_batch_size: int | None = Field(
        default=None, gt=0, description="sequences per optimizer step; derives grad_accum"
    )

    def resolve(self, world_size: int) -> tuple[int, int]:
        """Return (grad_accum, global_batch_size) for this world size, or raise ConfigError."""
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size is not None:
            if self.global_batch_size % per_step:
                fits = [
                    m for m in range(self.micro_batch_size, 0, -1) if self.global_batch_size % (m * world_size) == 0
                ]
                fix = (
                    f"set batch.micro_batch_size={fits[0]}"
                    if fits
                    else "no micro-batch splits it: use a GPU count that divides it (ptbr train --dry-run lists them)"
                )
                raise ConfigError(
                    f"batch.global_batch_size ({self.global_batch_size}) must be a multiple of "
                    f"micro_batch_size x world size ({self.micro_batch_size} x {world_size}); {fix}"
                )
            accum = self.global_batch_size // per_step
            if self.grad_accum is not None and self.grad_accum != accum:
                raise ConfigError(
                    f"batch.grad_accum ({self.grad_accum}) contradicts global_batch_size "
                    f"({self.global_batch_size} = {accum} x {per_step}); set only one"
                )
            return accum, self.global_batch_size
        accum = self.grad_accum or 1
        return accum, accum * per_step


class ZeroConfig(StrictModel):
    stage: Literal[1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False

    @model_validator(mode="after")
    def _check(self) -> ZeroConfig:
        if self.offload_params and self.stage != 3:
            raise ValueError("offload_params needs stage 3")
        return self


class WandbConfig(StrictModel):
    """Weights & Biases tracking from rank 0 (``pip install 'ptbr[wandb]'``); off unless ``mode`` says otherwise."""

    mode: Literal["online", "offline", "disabled"] = Field(
        default="disabled",
        description="online: stream to the server; offline: write RUN_DIR/wandb for "
        "`wandb sync` later; disabled: no W&B at all",
    )
    project: str | None = Field(default=None, description="W&B project (default: W&B's own)")
    entity: str | None = Field(default=None, description="W&B team or user (default: the API key's)")
    name: str | None = Field(default=None, description="run name (default: the run directory's name)")
    tags: list[str] = Field(default_factory=list)
    dir: str | None = Field(default=None, description="where W&B writes its files (default: train.run_dir)")


class TrainLoopConfig(StrictModel):
    run_dir: str = "runs/default"
    seed: int = 1234
    max_steps: int = Field(default=1000, gt=0)
    log_every: int = Field(default=10, gt=0)
    eval_every: int = Field(default=200, ge=0, description="0: only at the end")
    eval_samples: int = Field(default=256, gt=0, description="validation sequences per evaluation")
    checkpoint_every: int = Field(default=500, ge=0, description="0: only at the end")
    keep_checkpoints: int = Field(default=3, ge=2, description="complete checkpoints to keep (>= 2)")
    max_nonfinite_in_row: int = Field(default=5, gt=0)
    wkv_backend: Literal["auto", "reference", "torch", "triton"] = "auto"
    grad_checkpointing: bool = False
    segment_len: int | None = Field(
        default=None,
        gt=0,
        description="long context: run each sample in segments of this many tokens, "
        "the recurrent state carried across (activations of one segment "
        "at a time); None: one pass over data.seq_len",
    )
    bptt: Literal["full", "truncated"] = Field(
        default="full",
        description="with segment_len: the gradient "
        "flows back through the carried state (full) or stops at each "
        "segment boundary (truncated)",
    )
    init_from: str | None = Field(
        default=None,
        description="a fresh run starts from these weights (a directory "
        "written by ptbr export); a run that resumes its own checkpoint ignores it",
    )
    tensorboard: bool = True
    peak_tflops: float | None = Field(default=None, gt=0, description="per device; default: detected")
    collective_timeout_s: float = Field(
        default=1800.0,
        gt=0,
        description="a collective waiting longer for a rank (dead, hung, lost node) fails, and the job ends",
    )
    wandb: WandbConfig = WandbConfig()
    bench_every: int = Field(
        default=0,
        ge=0,
        description="run lm-eval tasks (train.bench_tasks) on the current "
        "weights every N steps, logged like validation loss; 0: never (needs ptbr[bench])",
    )
    bench_tasks: str = Field(default="ptbr_core", description="a suite or task names separated by commas")
    bench_limit: int = Field(default=50, gt=0, description="examples per task in each training-time benchmark")
    bench_include: list[str] = Field(default_factory=list, description="directories of lm-eval task YAML files")


class DebugConfig(StrictModel):
    """Fault injection for tests of the guards; never set in real runs."""

    nonfinite_loss_at_steps: list[int] = Field(default_factory=list)
    pause_before_commit_s: float = Field(default=0.0, ge=0, description="sleep before a checkpoint commits")
    pause_at_steps: list[int] | None = Field(default=None, description="only pause at these steps")
    record_samples: bool = Field(default=False, description="write each rank's sample ids to RUN_DIR/samples")


class TrainConfig(StrictModel):
    model: RWKV6Config
    data: DataConfig
    optim: OptimConfig = OptimConfig()
    batch: BatchConfig = BatchConfig()
    zero: ZeroConfig = ZeroConfig()
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    train: TrainLoopConfig = TrainLoopConfig()
    deepspeed: dict[str, Any] = Field(default_factory=dict, description="raw DeepSpeed keys, merged last")
    debug: DebugConfig = DebugConfig()

    @model_validator(mode="before")
    @classmethod
    def _model_section(cls, data: Any) -> Any:
        """``model:`` may name a preset or a file (see ptbr.model.config.model_spec)."""
        if isinstance(data, dict) and isinstance(data.get("model"), dict | str):
            data = {**data, "model": model_spec(data["model"], "", key="model.preset")}
        return data

    @model_validator(mode="after")
    def _recompute_fits_zero(self) -> TrainConfig:
        # ZeRO-3 needs the reentrant block recompute (ptbr.model.rwkv6._recomputed_block), which reports a
        # block's gradients once per call: with segments, once per segment, and DeepSpeed refuses that
        seg = self.train.segment_len
        if self.train.grad_checkpointing and self.zero.stage == 3 and seg is not None and seg < self.data.seq_len:
            raise ValueError(
                "train.grad_checkpointing does not work together with train.segment_len at zero.stage 3; "
                "drop grad_checkpointing (the segments already bound activation memory) or use "
                "zero.stage 2"
            )
        return self

    @model_validator(mode="after")
    def _segments_fit(self) -> TrainConfig:
        seg = self.train.segment_len
        if seg is not None and seg > self.data.seq_len:
            raise ValueError(
                f"train.segment_len ({seg}) is longer than data.seq_len ({self.data.seq_len}); "
                "use a segment_len <= seq_len, or leave it unset for one pass"
            )
        return self

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
        """The config file at ``path`` with ``key=value`` overrides. A ``model:`` file named in the config file
        is found relative to that file's directory (``model: ../model/tiny.yaml``), so the config works from
        any working directory; a ``model=...`` override is relative to the working directory, like every
        other path on the command line. Run-time paths inside the file (``data.source``, ``data.cache_dir``,
        ``train.run_dir``, ``train.init_from``) are relative to the working directory."""
        data = load_yaml(path)
        model = data.get("model")
        if isinstance(model, str) and model.endswith((".yaml", ".yml")) and not Path(model).is_absolute():
            data["model"] = str(Path(path).parent / model)
        if isinstance(data.get("model"), str | dict):  # before the overrides: model.* applies to a preset too
            data["model"] = model_spec(data["model"], str(path), key="model.preset")
        return validate(cls, apply_overrides(data, overrides or []), str(path))

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
