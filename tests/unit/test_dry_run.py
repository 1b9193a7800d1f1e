"""``ptbr train --dry-run`` and the node-count rules, on a local dataset: no processes, no server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ptbr.checkpoint import layout
from ptbr.data.build import BuildSettings, build_shards
from ptbr.data.stream import check_canonical_nodes, working_node_counts
from ptbr.data.tokenizer import train_tokenizer
from ptbr.devtools.sample_text import portuguese_documents
from ptbr.errors import ConfigError, DataError
from ptbr.train import dry_run
from ptbr.train.config import TrainConfig
from ptbr.train.node_counts import NodePlan
from tests.helpers.train_harness import REPO, TINY_CONFIG


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dry")
    docs = portuguese_documents(200, seed=3)
    (root / "corpus").mkdir()
    (root / "corpus" / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    train_tokenizer(docs, vocab_size=512).save(str(root / "tok.json"))
    build_shards(
        [str(root / "corpus")],
        root / "tok.json",
        root / "ds",
        BuildSettings(seq_len=32, val_fraction=0.05),
        workers=1,
        progress=False,
        log=lambda _: None,
    )
    return root / "ds"


def config(dataset: Path, tmp_path: Path, *overrides: str) -> TrainConfig:
    return TrainConfig.load(TINY_CONFIG, [f"data.source={dataset}", f"train.run_dir={tmp_path / 'run'}", *overrides])


def samples(dataset: Path) -> int:
    return json.loads((dataset / "manifest.json").read_text())["splits"]["train"]["samples"]


def test_the_table_resolves_batch_data_stream_and_resume(dataset: Path, tmp_path: Path) -> None:
    rows = dict(
        dry_run.plan(
            config(dataset, tmp_path, "train.max_steps=100", "batch.global_batch_size=16"),
            world_size=4,
            nodes=2,
            tokens_per_s=512,
        )
    )
    assert rows["world"] == "4 ranks on 2 node(s) (2 per node)"
    assert rows["batch"] == "micro 4 x accum 1 x 4 = 16 sequences of 32 = 512 tokens per step"
    assert f"{samples(dataset):,} training samples" in rows["data"]
    assert rows["nodes"] == (
        "2 canonical nodes; node counts that work at micro-batch 4, 2 GPU(s) per node: 1, 2; "
        "with a smaller batch.micro_batch_size also 4 (micro 2), 8 (micro 1)"
    )
    assert rows["resume"] == "fresh start"
    assert rows["time"] == "100 steps to go = 01:40 at 512 tok/s"
    assert "WARNING" not in rows


def test_the_table_says_how_a_sample_is_run(dataset: Path, tmp_path: Path) -> None:
    rows = dict(dry_run.plan(config(dataset, tmp_path), world_size=1, nodes=1, tokens_per_s=512))
    assert rows["context"] == "one pass over 32 tokens; documents share the state (RWKV-LM)"
    rows = dict(
        dry_run.plan(
            config(dataset, tmp_path, "train.segment_len=12", "model.reset_state_at_eos=true"),
            world_size=1,
            nodes=1,
            tokens_per_s=512,
        )
    )
    assert rows["context"].startswith("3 segments of 12 tokens carrying the state, full BPTT")
    assert rows["context"].endswith("every document from a zero state (reset_state_at_eos)")
    with pytest.raises(ConfigError, match="train.segment_len \\(64\\) is longer than data.seq_len \\(32\\)"):
        config(dataset, tmp_path, "train.segment_len=64")
    with pytest.raises(ConfigError, match="train.grad_checkpointing does not work together with train.segment_len"):
        config(dataset, tmp_path, "train.grad_checkpointing=true", "zero.stage=3", "train.segment_len=8")
    config(dataset, tmp_path, "train.grad_checkpointing=true", "zero.stage=3")  # each alone is fine
    config(dataset, tmp_path, "train.grad_checkpointing=true", "zero.stage=2", "train.segment_len=8")


def test_problems_are_one_line(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"batch.global_batch_size \(8\) does not split over 1 nodes x 3 GPU\(s\) at "
        r"any micro-batch; node counts that work at micro-batch 4",
    ):
        dry_run.plan(config(dataset, tmp_path), world_size=3, nodes=1)
    with pytest.raises(ConfigError, match="3 nodes cannot read a stream of 4 canonical nodes"):
        dry_run.plan(
            config(dataset, tmp_path, "data.num_canonical_nodes=4", "batch.global_batch_size=24"), world_size=3, nodes=3
        )
    with pytest.raises(DataError, match="hold sequences of 32 tokens but data.seq_len is 64"):
        dry_run.plan(config(dataset, tmp_path, "data.seq_len=64"), world_size=1, nodes=1)
    with pytest.raises(DataError, match="no manifest.json"):
        dry_run.plan(config(tmp_path, tmp_path), world_size=1, nodes=1)


def test_the_resume_decision_changes_nothing_on_disk(dataset: Path, tmp_path: Path) -> None:
    broken = tmp_path / "run" / "checkpoints" / layout.tag_for(10)
    broken.mkdir(parents=True)  # an incomplete checkpoint only
    cfg = config(dataset, tmp_path)
    with pytest.raises(Exception, match="none is complete"):
        dry_run.plan(cfg, world_size=1, nodes=1)
    assert dict(dry_run.plan(cfg, world_size=1, nodes=1, allow_fresh_start=True))["resume"] == "fresh start"
    assert broken.is_dir() and not list(broken.parent.glob("discarded-*"))  # not moved aside


def test_node_counts_come_from_the_stream_and_the_batch() -> None:
    """The 1b5 preset (global batch 512, micro-batch 8, 8 GPUs per node, 6720 canonical nodes)."""
    plan = NodePlan(6720, 512, 8, 8)
    assert plan.working_counts() == [1, 2, 4, 8]
    assert plan.with_smaller_micro_batch() == [(16, 4), (32, 2), (64, 1)]
    plan.check(4)  # 8 nodes -> 4 after losing some: works
    with pytest.raises(ConfigError, match=r"does not split over 6 nodes x 8 GPU\(s\) at any micro-batch"):
        plan.check(6)  # the README's old example: 512 samples do not split over 48 GPUs
    with pytest.raises(ConfigError, match="set batch.micro_batch_size=4"):
        plan.check(16)
    with pytest.raises(ConfigError, match="21 nodes cannot read a stream of 8 canonical nodes"):
        NodePlan(8, None, 8, 8).check(21)
    # grad_accum instead of a global batch: only the stream limits the node count
    assert NodePlan(6720, None, 8, 8).working_counts(limit=16) == working_node_counts(6720, limit=16)
    assert 21 in NodePlan(6720, 21 * 8 * 4, 4, 8).working_counts() and 35 in NodePlan(6720, None, 4, 8).working_counts()


def test_node_count_rules() -> None:
    assert working_node_counts(6720, limit=16) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 15, 16]
    assert working_node_counts(2, limit=6) == [1, 2, 4, 6]
    check_canonical_nodes(6720, 12, 10**6)
    with pytest.raises(DataError, match="node counts that work: 1, 2, 3, 4, 6, 8, 12"):
        check_canonical_nodes(24, 9, 10**6)
    with pytest.raises(DataError, match="exceeds the 100 training samples"):
        check_canonical_nodes(6720, 8, 100)


@pytest.mark.parametrize("gpus", [8, 16, 64])
def test_memory_estimates_follow_deepspeed(gpus: int) -> None:
    from ptbr.model.memory import model_state_gib

    cfg = TrainConfig.load(REPO / "configs" / "train" / "1b5.yaml")
    mem = model_state_gib(cfg.model, gpus, gpus // 8)
    p = 1_462_509_568
    assert mem["2"] == pytest.approx((2 * p + int(18 * p / gpus)) / 2**30)
    assert mem["1"] == pytest.approx((4 * p + 16 * p / gpus) / 2**30)
    # DeepSpeed's ZeRO-3 estimator (no offload): 4 bytes of the largest layer (here the 32,000 x 2048 embedding,
    # gathered whole) plus 18 bytes per parameter partitioned over all GPUs
    assert mem["3"] == pytest.approx((4 * 32000 * 2048 + int(18 * p / gpus)) / 2**30)
    assert mem["3"] < mem["2"] < mem["1"]


@pytest.mark.slow  # several seconds of its own: in tests/unit, out of -m "not slow"
def test_cli_dry_run_exit_codes(dataset: Path, tmp_path: Path) -> None:
    def ptbr_train(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "ptbr.cli",
                "train",
                "--dry-run",
                "--config",
                TINY_CONFIG,
                f"train.run_dir={tmp_path / 'run'}",
                *args,
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=300,
        )

    ok = ptbr_train(f"data.source={dataset}", "--world-size", "2", "--nodes", "1")
    assert ok.returncode == 0 and "resume  fresh start" in ok.stdout, ok.stderr[-2000:]
    bad = ptbr_train(f"data.source={dataset}", "optim.lrr=1")
    assert bad.returncode == 2
    assert [ln for ln in bad.stderr.splitlines() if ln.startswith("ptbr: error:")] == [
        f"ptbr: error: {TINY_CONFIG}: optim.lrr: unknown key (check the spelling; see configs/ for the valid keys)"
    ]
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
