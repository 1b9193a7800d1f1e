"""Weighted mixing of published datasets (data.sources): observed proportions, an exact elastic resume,
validation loss per source, and the one-line refusal of a source that does not fit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ptbr.checkpoint import layout
from ptbr.devtools.sample_text import portuguese_documents
from tests.helpers.fixtures import SEQ_LEN, VOCAB, ptbr
from tests.helpers.train_harness import REPO, describe, read_metrics, run_env, samples_by_step, torchrun, train_args

pytestmark = pytest.mark.slow

COMMON = (
    "train.log_every=1",
    "train.eval_every=0",
    "precision=fp32",
    "debug.record_samples=true",
    "data.num_workers=0",
)
WEIGHTS = (3, 1)  # a: 75 %, b: 25 %


def publish(tmp: Path, s3_server, name: str, docs: int, seed: int, tokenizer: Path | None = None) -> dict:
    corpus = tmp / name / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "docs.jsonl").write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in portuguese_documents(docs, seed=seed))
    )
    env = run_env(s3_server.env())
    if tokenizer is None:
        tokenizer = tmp / name / "tokenizer.json"
        ptbr(
            "tokenizer",
            "train",
            "--input",
            str(corpus),
            "--output",
            str(tokenizer),
            "--vocab-size",
            str(VOCAB),
            env=env,
        )
    shards = tmp / name / "shards"
    ptbr(
        "shards",
        "build",
        "--input",
        str(corpus),
        "--tokenizer",
        str(tokenizer),
        "--output",
        str(shards),
        "--seq-len",
        str(SEQ_LEN),
        "--val-fraction",
        "0.05",
        env=env,
    )
    s3_server.create_bucket("mix")
    url = f"s3://mix/{name}"
    ptbr("shards", "publish", str(shards), url, env=env)
    return {
        "url": url,
        "env": env,
        "tokenizer": tokenizer,
        "manifest": json.loads((shards / "manifest.json").read_text()),
    }


@pytest.fixture(scope="module")
def sources(s3_server, tmp_path_factory) -> dict[str, dict]:
    """a (~600 samples) and b (~300) share a tokenizer; odd has its own."""
    tmp = tmp_path_factory.mktemp("mixing")
    a = publish(tmp, s3_server, "a", 400, seed=7)
    b = publish(tmp, s3_server, "b", 200, seed=11, tokenizer=a["tokenizer"])
    odd = publish(tmp, s3_server, "odd", 200, seed=13)
    return {"a": a, "b": b, "odd": odd}


def mixture(*names: str, weights=WEIGHTS) -> str:
    return "data.sources=[" + ", ".join(f"{{source: s3://mix/{n}, weight: {w}}}" for n, w in zip(names, weights)) + "]"


def stream_of(sample_id: int, a_samples: int) -> str:
    """Streaming numbers the samples of its streams one after the other: a's first, then b's."""
    return "a" if sample_id < a_samples else "b"


def test_proportions_follow_the_weights_and_eval_reports_each_source(sources, tmp_path):
    a, b = sources["a"], sources["b"]
    run_dir = tmp_path / "run"
    args = train_args(run_dir, a["url"], *COMMON, mixture("a", "b"), "train.max_steps=60", "train.eval_every=30")
    proc = torchrun(1, args, a["env"])
    assert proc.returncode == 0, describe(proc)
    a_samples = a["manifest"]["splits"]["train"]["samples"]
    ids = [i for step_ids in samples_by_step(run_dir).values() for i in step_ids]
    assert len(ids) == 60 * 8 and max(ids) < a_samples + b["manifest"]["splits"]["train"]["samples"]
    share_b = sum(stream_of(i, a_samples) == "b" for i in ids) / len(ids)
    # 480 draws from a shuffled epoch holding exactly 25 % of b: standard deviation ~0.017
    assert abs(share_b - 0.25) < 0.06, share_b
    evals = [r for r in read_metrics(run_dir) if r["kind"] == "eval"]
    assert evals and {"val_loss", "val_loss_mix_a", "val_loss_mix_b"} <= evals[-1].keys()
    last = evals[-1]
    low, high = sorted((last["val_loss_mix_a"], last["val_loss_mix_b"]))
    assert low <= last["val_loss"] <= high  # pooled over both sources' tokens
    assert "mix_a" in proc.stdout + proc.stderr  # the eval log line names the sources
    from ptbr.train.plots import _series, plot_run
    from ptbr.train.plots import read_metrics as plot_records

    assert run_dir / "plots" / "val_loss.png" in plot_run(run_dir)  # pooled and per-source lines
    assert _series(plot_records(run_dir), "eval", "val_loss_mix_b")[0] == [30, 60]


def test_elastic_resume_with_a_mixture_reads_the_uninterrupted_samples(sources, tmp_path):
    a = sources["a"]
    common = (*COMMON, mixture("a", "b"), "train.max_steps=30", "train.checkpoint_every=15", "train.keep_checkpoints=5")
    reference = tmp_path / "reference"
    proc = torchrun(2, train_args(reference, a["url"], *common), a["env"])
    assert proc.returncode == 0, describe(proc)
    source = tmp_path / "source"
    proc = torchrun(1, train_args(source, a["url"], *common), a["env"])
    assert proc.returncode == 0, describe(proc)
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    tag = layout.tag_for(15)
    shutil.copytree(source / "checkpoints" / tag, resumed / "checkpoints" / tag)
    proc = torchrun(2, train_args(resumed, a["url"], *common), a["env"])
    assert proc.returncode == 0, describe(proc)
    after = {s: ids for s, ids in samples_by_step(resumed).items() if s > 15}
    assert after and after == {s: ids for s, ids in samples_by_step(reference).items() if s > 15}


def test_a_source_with_another_tokenizer_is_refused_in_one_line(sources, tmp_path):
    a = sources["a"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ptbr.cli",
            "train",
            *train_args(tmp_path / "run", a["url"], *COMMON, mixture("a", "odd"), "train.max_steps=2"),
        ],
        env=a["env"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 2, describe(proc)
    errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("ptbr: error:")]
    assert errors and "s3://mix/odd was tokenized with another tokenizer" in errors[0]
    assert "Traceback" not in proc.stderr


def test_a_mixture_changes_the_dataset_identity(sources, monkeypatch):
    from ptbr.data.mixture import read_mixture
    from ptbr.train.config import SourceSpec

    for key, value in sources["a"]["env"].items():
        monkeypatch.setenv(key, value)
    m31 = read_mixture([SourceSpec(source="s3://mix/a", weight=3), SourceSpec(source="s3://mix/b", weight=1)])
    m11 = read_mixture([SourceSpec(source="s3://mix/a", weight=1), SourceSpec(source="s3://mix/b", weight=1)])
    single = read_mixture([SourceSpec(source="s3://mix/a", weight=1)])
    assert len({m31["dataset_hash"], m11["dataset_hash"], single["dataset_hash"]}) == 3
    assert single["dataset_hash"] == sources["a"]["manifest"]["dataset_hash"]  # one source: its own identity
    assert [p["weight"] for p in m31["mixture"]] == [0.75, 0.25]
    assert m31["splits"]["train"]["samples"] == sum(sources[n]["manifest"]["splits"]["train"]["samples"] for n in "ab")
