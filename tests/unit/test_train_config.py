"""Training configuration, launcher detection, optimiser groups and schedule (no processes)."""

from __future__ import annotations

import math

import pytest
import torch

from ptbr.dist import detect, expand_nodelist, expand_tasks_per_node
from ptbr.errors import ConfigError
from ptbr.model import RWKV6
from ptbr.train.config import TrainConfig
from ptbr.train.ds_config import build_ds_config
from ptbr.train.optim import WarmupCosine, build_optimizer, lr_at, param_groups

TINY_YAML = "configs/train/tiny_cpu.yaml"


def test_every_train_config_in_repo_validates() -> None:
    from pathlib import Path

    paths = sorted(Path("configs/train").glob("*.yaml"))
    assert paths
    for path in paths:
        cfg = TrainConfig.load(path)
        assert cfg.model.vocab_size >= 256


def test_overrides_and_unknown_keys() -> None:
    cfg = TrainConfig.load(TINY_YAML, ["optim.lr=1e-3", "zero.stage=3", "model.n_layer=3"])
    assert cfg.optim.lr == 1e-3 and cfg.zero.stage == 3 and cfg.model.n_layer == 3
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown key"):
        TrainConfig.load(TINY_YAML, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"zero\.stage: Input should be 1, 2 or 3"):
        TrainConfig.load(TINY_YAML, ["zero.stage=0"])
    with pytest.raises(ConfigError, match=r"min_lr .* must not exceed lr"):
        TrainConfig.load(TINY_YAML, ["optim.min_lr=1.0"])
    with pytest.raises(ConfigError, match=r"model: n_embd \(100\) must be a multiple of head_size"):
        TrainConfig.load(TINY_YAML, ["model.n_embd=100"])


def test_batch_resolution() -> None:
    cfg = TrainConfig.load(TINY_YAML, ["batch.micro_batch_size=2", "batch.global_batch_size=12"])
    assert cfg.batch.resolve(1) == (6, 12)
    assert cfg.batch.resolve(2) == (3, 12)
    assert cfg.batch.resolve(3) == (2, 12)
    with pytest.raises(ConfigError, match=r"global_batch_size \(12\) must be a multiple"):
        cfg.batch.resolve(4)


def test_deepspeed_config_is_derived() -> None:
    cfg = TrainConfig.load(
        TINY_YAML,
        [
            "zero.stage=3",
            "precision=bf16",
            "optim.grad_clip=0.5",
            "deepspeed.zero_optimization.reduce_bucket_size=1000",
        ],
    )
    ds = build_ds_config(cfg, *cfg.batch.resolve(2), cuda=False)
    assert ds["train_batch_size"] == 8 and ds["gradient_accumulation_steps"] == 1
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["reduce_bucket_size"] == 1000  # raw override merged last
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["gradient_clipping"] == 0.5


def test_rwkv_lm_optimizer_groups() -> None:
    cfg = TrainConfig.load(TINY_YAML)
    model = RWKV6(cfg.model)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: {names[id(p)] for p in g["params"]} for g in param_groups(model, cfg.optim)}
    assert "blocks.0.att.time_decay" in groups["time_decay"]
    assert all("time_decay" in n and "_w" not in n for n in groups["time_decay"])
    decayed = groups["decay"]
    assert {"emb.weight", "head.weight", "blocks.1.att.key.weight", "blocks.0.ffn.value.weight"} <= decayed
    for n in (
        "blocks.0.att.time_maa_w1",
        "blocks.0.att.time_decay_w2",
        "blocks.0.att.time_faaaa",
        "blocks.0.ln1.weight",
        "blocks.0.att.ln_x.bias",
        "blocks.0.att.time_maa_x",
    ):
        assert n in groups["no_decay"], n
    total = sum(len(v) for v in groups.values())
    assert total == len(list(model.parameters()))


def test_warmup_cosine_schedule_and_lr_scale() -> None:
    cfg = TrainConfig.load(TINY_YAML, ["optim.lr=1e-3", "optim.min_lr=1e-4", "optim.warmup_steps=10"])
    o = cfg.optim
    assert lr_at(0, o, 110) == pytest.approx(1e-4)
    assert lr_at(9, o, 110) == pytest.approx(1e-3)
    assert lr_at(60, o, 110) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, o, 110) == pytest.approx(1e-4)
    assert lr_at(500, o, 110) == pytest.approx(1e-4)
    model = RWKV6(cfg.model)
    opt = build_optimizer(model, o)
    sched = WarmupCosine(opt, o, 110)
    for _ in range(20):
        sched.step()
    by_name = {g["name"]: g["lr"] for g in opt.param_groups}
    assert by_name["time_decay"] == pytest.approx(2 * by_name["decay"])
    assert by_name["decay"] == pytest.approx(lr_at(20, o, 110))
    clone = WarmupCosine(build_optimizer(model, o), o, 110)
    clone.load_state_dict(sched.state_dict())
    assert clone.get_last_lr() == sched.get_last_lr()


def test_fused_adamw_where_training_steps_on_cuda() -> None:
    """The optimizer is built before DeepSpeed moves the model to the GPU: the training device decides, and
    torch checks the fused kernel's device only when it steps."""
    cfg = TrainConfig.load(TINY_YAML, [])
    model = RWKV6(cfg.model)  # on the CPU, as at build time
    assert build_optimizer(model, cfg.optim, "cuda").defaults["fused"] is True
    assert not build_optimizer(model, cfg.optim, "cuda", offload=True).defaults["fused"]
    assert not build_optimizer(model, cfg.optim, "cpu").defaults["fused"]


def test_launcher_detection() -> None:
    torchrun = detect(
        {
            "RANK": "3",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "n1",
            "MASTER_PORT": "1234",
        }
    )
    assert (torchrun.rank, torchrun.local_world_size, torchrun.launcher) == (3, 2, "torchrun")
    assert torchrun.node_rank == 1 and torchrun.num_nodes == 4
    ds = detect({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_SIZE": "2"})
    assert (ds.local_world_size, ds.launcher) == (2, "deepspeed")
    slurm = detect(
        {
            "SLURM_PROCID": "5",
            "SLURM_NTASKS": "8",
            "SLURM_LOCALID": "1",
            "SLURM_NODEID": "1",
            "SLURM_TASKS_PER_NODE": "4(x2)",
            "SLURM_JOB_NODELIST": "gpu[07-08]",
            "SLURM_JOB_ID": "4242",
            "SLURM_STEP_ID": "0",
        }
    )
    assert (slurm.rank, slurm.world_size, slurm.local_rank, slurm.local_world_size) == (5, 8, 1, 4)
    assert slurm.master_addr == "gpu07" and slurm.master_port == 20000 + 4242
    assert detect({}).launcher == "single"


def test_slurm_list_parsing() -> None:
    assert expand_nodelist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
    assert expand_nodelist("a[8-10]b") == ["a8b", "a9b", "a10b"]
    assert expand_tasks_per_node("4(x2),2") == [4, 4, 2]


def test_hostfile_from_slurm_script(tmp_path) -> None:
    import subprocess
    import sys

    out = tmp_path / "hostfile"
    proc = subprocess.run(
        [
            sys.executable,
            "launch/hostfile_from_slurm.py",
            "--out",
            str(out),
            "--nodelist",
            "gpu[01-02]",
            "--slots",
            "4",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "gpu01 slots=4\ngpu02 slots=4\n"
    proc = subprocess.run(
        [sys.executable, "launch/hostfile_from_slurm.py", "--out", str(out), "--nodelist", ""],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "no hosts" in proc.stderr and "Traceback" not in proc.stderr


def test_data_sources_config() -> None:
    """data.sources: a weighted mixture; data.source names its first; one of the two must be set."""
    mix = "data.sources=[{source: s3://b/wiki/v1, weight: 0.7}, {source: s3://b/laws/v1, weight: 0.3, name: leis}]"
    cfg = TrainConfig.load(TINY_YAML, ["data.source=s3://b/wiki/v1", mix])
    assert cfg.data.mixed and cfg.data.source == "s3://b/wiki/v1"
    assert [(s.label(), s.weight) for s in cfg.data.mixture()] == [("wiki_v1", 0.7), ("leis", 0.3)]
    single = TrainConfig.load(TINY_YAML, ["data.source=s3://b/wiki/v1"])
    assert not single.data.mixed and [s.source for s in single.data.mixture()] == ["s3://b/wiki/v1"]
    with pytest.raises(ConfigError, match="set either source or sources"):
        TrainConfig.load(TINY_YAML, ["data.source=s3://b/other", mix])
    with pytest.raises(ConfigError, match="distinct names"):
        TrainConfig.load(
            TINY_YAML,
            [
                "data.source=s3://b/wiki/v1",
                "data.sources=[{source: s3://b/wiki/v1, weight: 1}, {source: s3://c/wiki/v1, weight: 1}]",
            ],
        )
    with pytest.raises(ConfigError, match=r"weight"):
        TrainConfig.load(
            TINY_YAML, ["data.source=s3://b/wiki/v1", "data.sources=[{source: s3://b/wiki/v1, weight: 0}]"]
        )


def test_loss_by_position_buckets() -> None:
    import torch

    from ptbr.model.loss import bucket_edges, bucket_losses

    assert bucket_edges(32) == [(0, 8), (8, 32)]
    assert bucket_edges(256) == [(0, 64), (64, 256)]
    assert bucket_edges(512) == [(0, 128), (128, 512)]
    assert bucket_edges(16384) == [(0, 128), (128, 512), (512, 2048), (2048, 8192), (8192, 16384)]
    nll = torch.cat([torch.full((128,), 3.0), torch.full((384,), 2.0), torch.full((88,), 1.0)]) * 4  # 4 sequences
    assert bucket_losses(nll, 4) == {"0-128": 3.0, "128-512": 2.0, "512-600": 1.0}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_adamw_steps_once_the_model_is_on_cuda() -> None:
    cfg = TrainConfig.load(TINY_YAML, [])
    model = RWKV6(cfg.model)
    opt = build_optimizer(model, cfg.optim, "cuda")
    model.cuda()  # what DeepSpeed does after the optimizer was built
    model(torch.randint(0, 64, (1, 8), device="cuda")).float().mean().backward()
    opt.step()
    assert opt.param_groups[0]["fused"] is True
