"""lm-evaluation-harness on a trained tiny export, without network: the harness's numbers against ptbr's own.

Costs about 3.5 minutes on 2 busy cores: the module's fixture (~80 s: the session's S3 server and tiny dataset,
shared with the other system tests, then a 1-rank training run of 30 steps and its export), the harness
in-process (~10 s), ``ptbr bench`` / ``lm_eval`` commands under ``unshare -n`` (~10-30 s each; the offline-Hub
case makes lm-eval index its ~13,000 built-in task files, ~40 s of the bad-input test), an editable install
into a temporary prefix and a wheel build (~5 s each).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from tests.helpers.bench_tasks import TASKS, write_tasks
from tests.helpers.train_harness import REPO, describe, run_env, torchrun, train_args

pytestmark = pytest.mark.slow
PTH = REPO / "ptbr" / "bench" / "ptbr-lm-eval.pth"


def can_unshare() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(["unshare", "-n", "true"]).returncode == 0


needs_unshare = pytest.mark.skipif(not can_unshare(), reason="unshare -n needs root (or user namespaces)")


def offline(cmd: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``cmd`` without any network (loopback only): a download attempt fails it."""
    return subprocess.run(["unshare", "-n", *cmd], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def export(tiny_dataset, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    run_dir = root / "run"
    proc = torchrun(
        1,
        train_args(
            run_dir,
            tiny_dataset.url,
            "train.max_steps=30",
            "train.log_every=10",
            "train.eval_every=0",
            "train.checkpoint_every=0",
            "precision=fp32",
        ),
        tiny_dataset.env,
    )
    assert proc.returncode == 0, describe(proc)
    out = root / "export"
    proc = subprocess.run(
        [sys.executable, "-m", "ptbr.cli", "export", str(run_dir), str(out), "--dtype", "fp32", "--quiet"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=run_env(),
        timeout=300,
    )
    assert proc.returncode == 0, describe(proc)
    return out


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    return write_tasks(tmp_path_factory.mktemp("bench_tasks"))


@pytest.fixture(scope="module")
def harness(export, tasks_dir):
    """The harness run in-process with every request's answer kept (log_samples)."""
    from ptbr.bench.runner import evaluate, prepare
    from ptbr.infer.harness import PtbrLM

    tm, tasks = prepare(list(TASKS), [str(tasks_dir)])
    # 4 choices per question: batches of 3 mix questions (right padding); chunks of 5 tokens carry the state
    lm = PtbrLM(path=str(export), device="cpu", batch_size=3, chunk=5)
    return lm, evaluate(lm, tm, tasks, log_samples=True)


def own_logprob(lm, context: str, continuation: str) -> float:
    """ptbr's own summed token log-likelihood of ``continuation`` after ``context``, through the training loss,
    split into tokens as lm-eval's TemplateLM does (whole text encoded, the context's tokens cut off)."""
    encode = lm.loaded.tokenizer.encode
    ctx = encode(context, add_special_tokens=False).ids
    whole = encode(context + continuation, add_special_tokens=False).ids
    cont = whole[len(ctx) :]
    seq = torch.tensor([ctx + cont])
    with torch.no_grad():
        nll = lm.loaded.model(seq[:, :-1], targets=seq[:, 1:], reduction="none")[0].double()
    return -float(nll[len(ctx) - 1 :].sum())


def test_every_choice_scores_as_ptbr_does_and_accuracy_follows(harness):
    lm, raw = harness
    samples = raw["samples"]["ptbr_test_mc"]
    assert len(samples) == 8
    worst, hits = 0.0, []
    for s in samples:
        lls = [r[0][0] for r in s["resps"]]
        for (context, continuation), ll in zip(s["arguments"], lls):
            worst = max(worst, abs(ll - own_logprob(lm, context, continuation)))
        hits.append(max(range(len(lls)), key=lls.__getitem__) == int(s["target"]))
    assert worst < 1e-5, f"largest difference {worst:.2e}"
    acc = raw["results"]["ptbr_test_mc"]["acc,none"]
    assert acc == pytest.approx(sum(hits) / len(hits), abs=1e-12)
    print(f"\nmultiple choice: 32 loglikelihoods, largest |harness - ptbr| {worst:.2e}; acc {acc:.4f}")


def test_rolling_loglikelihood_equals_ptbr_eval_on_the_same_text(harness, export, tasks_dir):
    _, raw = harness
    samples = sorted(raw["samples"]["ptbr_test_ppl"], key=lambda s: s["doc_id"])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ptbr.cli",
            "eval",
            str(export),
            "--text",
            str(tasks_dir / "ppl.jsonl"),
            "--device",
            "cpu",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=run_env(),
        timeout=300,
    )
    assert proc.returncode == 0, describe(proc)
    ours = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(ours["documents"]) == len(samples) == 4
    diffs = [abs(s["resps"][0][0] + d["nll"]) for s, d in zip(samples, ours["documents"])]
    assert max(diffs) < 1e-5 * max(1.0, max(d["nll"] for d in ours["documents"]))
    bpb = raw["results"]["ptbr_test_ppl"]["bits_per_byte,none"]
    assert bpb == pytest.approx(ours["bits_per_byte"], rel=1e-6)
    print(f"\nrolling: 4 documents, largest |harness + ptbr eval| {max(diffs):.2e}; bits per byte {bpb:.4f}")


def test_generation_stops_at_the_stop_string(harness):
    from ptbr.infer.generate import SamplingSettings, generate

    lm, raw = harness
    samples = raw["samples"]["ptbr_test_gen"]
    stopped = 0
    for s in samples:
        prompt, kwargs = s["arguments"][0]
        out = s["resps"][0][0]
        free = "".join(
            generate(lm.loaded, prompt, SamplingSettings(max_tokens=kwargs["max_gen_toks"], temperature=0.0, seed=0))
        )
        cut = min((i for i in (free.find(u) for u in kwargs["until"]) if i >= 0), default=-1)
        assert out == (free[:cut] if cut >= 0 else free), (prompt, out, free)
        assert all(u not in out for u in kwargs["until"])
        stopped += cut >= 0
    assert stopped >= len(samples) // 2  # most continuations really hit a stop string (else the test proves little)


@needs_unshare
def test_ptbr_bench_offline_writes_results_and_a_table(export, tasks_dir, harness):
    _, raw = harness
    env = run_env({"HF_HOME": str(tasks_dir.parent / "hf_home")})
    proc = offline(
        [
            sys.executable,
            "-m",
            "ptbr.cli",
            "bench",
            str(export),
            str(export),
            "--tasks",
            ",".join(TASKS),
            "--include-path",
            str(tasks_dir),
            "--device",
            "cpu",
        ],
        env,
    )
    assert proc.returncode == 0, describe(proc)
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["task", "metric"] and len(lines) == 2 + len(TASKS)
    record = json.loads((export / "bench.json").read_text())
    assert (export / "bench.md").read_text().startswith("# Benchmarks of")
    config = json.loads((export / "config.json").read_text())
    assert record["step"] == config["step"] == 30 and record["tokens"] == config["tokens"]
    assert record["tasks"]["ptbr_test_mc"]["metrics"]["acc"]["value"] == raw["results"]["ptbr_test_mc"]["acc,none"]
    run_records = (Path(config["checkpoint"]).parents[1] / "bench.jsonl").read_text().splitlines()
    assert json.loads(run_records[-1])["scores"]["ptbr_test_mc/acc_norm"] == pytest.approx(
        raw["results"]["ptbr_test_mc"]["acc_norm,none"]
    )


@needs_unshare
def test_stock_lm_eval_command_knows_model_ptbr(export, tasks_dir, harness, tmp_path):
    """A real editable install (this checkout's setup.py) into a temporary prefix puts ptbr-lm-eval.pth into its
    site directory; Python processes it at start, and the stock ``lm_eval`` entry point then resolves
    ``--model ptbr`` (the .pth makes no network access, and neither does anything else here)."""
    _, raw = harness
    prefix = tmp_path / "prefix"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--prefix",
            str(prefix),
            "-e",
            str(REPO),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, describe(proc)
    [site_dir] = [p.parent for p in prefix.rglob("ptbr-lm-eval.pth")]
    assert (site_dir / "ptbr-lm-eval.pth").read_text() == PTH.read_text()
    out = tmp_path / "out"
    lm_eval = (
        "import site, sys; site.addsitedir(sys.argv.pop(1)); from lm_eval.__main__ import cli_evaluate; "
        "sys.argv[0] = 'lm_eval'; cli_evaluate()"
    )
    env = run_env({"HF_HOME": str(tmp_path / "hf_home")})
    proc = offline(
        [
            sys.executable,
            "-c",
            lm_eval,
            str(site_dir),
            "--model",
            "ptbr",
            "--model_args",
            f"path={export},device=cpu",
            "--tasks",
            "ptbr_test_mc",
            "--include_path",
            str(tasks_dir),
            "--output_path",
            str(out),
        ],
        env,
    )
    assert proc.returncode == 0, describe(proc)
    [results] = list(out.rglob("results_*.json"))
    theirs = json.loads(results.read_text())["results"]["ptbr_test_mc"]
    assert theirs["acc,none"] == raw["results"]["ptbr_test_mc"]["acc,none"]


def test_wheel_carries_the_pth_at_its_root(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, describe(proc)
    [wheel] = list(tmp_path.glob("ptbr-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        assert z.read("ptbr-lm-eval.pth").decode() == PTH.read_text()
        assert "ptbr/bench/tasks/ptbr_core.yaml" in z.namelist()


@needs_unshare
def test_bad_inputs_are_one_line(export, tasks_dir, tmp_path):
    env = run_env({"HF_HOME": str(tmp_path / "hf_home")})

    def error_of(*args: str) -> str:
        proc = offline([sys.executable, "-m", "ptbr.cli", "bench", *args, "--device", "cpu"], env)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, describe(proc)
        [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("ptbr: error:")]
        return line

    assert "unknown task 'ptbr_test_mcq' (did you mean ptbr_test_mc" in error_of(
        str(export), "--tasks", "ptbr_test_mcq", "--include-path", str(tasks_dir)
    )
    assert "is not a ptbr export" in error_of(str(tasks_dir), "--tasks", "ptbr_test_mc")
    line = error_of(str(export), "--tasks", "xwinograd_pt")
    assert "task xwinograd_pt needs its data from the Hugging Face Hub" in line and "cannot be reached" in line
