"""The real slurm/train_1b5.sh on a real Slurm controller with two fake nodes on this host.

Every job is the production script with command-line overrides for a tiny CPU run: 2 nodes x 1 task
(gloo), data from the local S3 server. Covered: preemption and requeue (the whole job reads exactly an
uninterrupted job's samples), a time limit, a rank killed -9 (the job ends, a resubmission resumes),
bad input caught before srun, the deepspeed launcher with a generated hostfile (--no_ssh, one launcher
per node) training and resuming, and elastic resume across node counts.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers.slurm_cluster import SlurmCluster, unavailable_reason
from tests.helpers.train_harness import REPO, last_step, read_metrics, resumes, samples_by_step, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")]

SCRIPT = str(REPO / "slurm" / "train_1b5.sh")
TINY = str(REPO / "configs" / "train" / "tiny_cpu.yaml")
SMALL_JOB = ("--cpus-per-task=1", "--gpus-per-node=0", "--time=30")  # the signal comes 10 min before
STEPS = 60


@pytest.fixture(scope="module")
def cluster():
    base = Path(f"/var/tmp/ptbr-slurm-test-{os.getpid()}")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    c = SlurmCluster(base).start()
    yield c
    c.stop()
    if not os.environ.get("PTBR_KEEP_SLURM_TEST"):  # keep the cluster's logs for a post-mortem
        shutil.rmtree(base, ignore_errors=True)


def overrides(run_dir: Path, dataset, *extra: str) -> list[str]:
    return [
        "--config",
        TINY,
        f"data.source={dataset.url}",
        f"train.run_dir={run_dir}",
        f"train.max_steps={STEPS}",
        "train.log_every=1",
        "train.eval_every=0",
        "train.checkpoint_every=10",
        "precision=fp32",
        "debug.record_samples=true",
        "data.num_canonical_nodes=2",
        "data.num_workers=2",
        "train.collective_timeout_s=60",
        *extra,
    ]


def submit(
    cluster: SlurmCluster,
    run_dir: Path,
    dataset,
    *sbatch: str,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    nodes: int = 2,
    per_node: int = 1,
) -> int:
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    # the shard cache inside this test's directory: the script's default (/tmp/ptbr-cache-$USER) outlives the
    # test session, and a later session would start from whatever an earlier one left there
    cache = {"PTBR_CACHE_DIR": str(cluster.base / "cache")}
    return cluster.sbatch(
        f"--nodes={nodes}",
        f"--ntasks-per-node={per_node}",
        *SMALL_JOB,
        f"--output={run_dir.parent}/job-%j.out",
        *sbatch,
        SCRIPT,
        *(args if args is not None else overrides(run_dir, dataset)),
        env={**dataset.env, "PYTHONPATH": str(REPO), **cache, **(env or {})},
    )


def rank_logs_tail(run_dir: Path, lines: int = 30) -> str:
    parts = []
    for path in sorted((run_dir / "logs").glob("**/*"))[-6:]:
        if path.is_file():
            parts.append(f"{path}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
    return "\n".join(parts)


def job_log(run_dir: Path, job_id: int) -> str:
    path = run_dir.parent / f"job-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module")
def reference(cluster, tiny_dataset) -> Path:
    """An uninterrupted job: the sample stream every interrupted one must reproduce."""
    run_dir = cluster.base / "reference" / "run"
    job = submit(cluster, run_dir, tiny_dataset)
    info = cluster.wait_job(job, ("COMPLETED", "FAILED", "CANCELLED"))
    assert info["JobState"] == "COMPLETED", job_log(run_dir, job)
    return run_dir


def test_preemption_requeues_and_the_whole_job_reads_the_uninterrupted_stream(cluster, tiny_dataset, reference):
    run_dir = cluster.base / "preempt" / "run"
    job = submit(cluster, run_dir, tiny_dataset)
    wait_for(lambda: last_step(run_dir) >= 15, timeout=180, what="step 15")
    t0 = time.monotonic()
    cluster.run("scancel", "--signal=USR1", "--batch", str(job))  # what --signal=B:USR1@lead does
    cluster.wait_job(job, ("PENDING",), restarts=1, timeout=120)
    cluster.start_now(job)

    def resumed() -> bool:  # a start that Slurm cancelled or requeued again is started again
        if cluster.job(job).get("JobState") == "PENDING":
            cluster.start_now(job)
        return len(resumes(run_dir)) == 1

    try:
        wait_for(resumed, timeout=400, what="the resume", interval=1.0)
    except TimeoutError as exc:  # say what the job was doing (the cluster directory is removed afterwards)
        raise AssertionError(
            f"{exc}; job {cluster.job(job)}\n--- job log ---\n{job_log(run_dir, job)[-6000:]}\n"
            f"--- rank logs ---\n{rank_logs_tail(run_dir)}"
        ) from exc
    requeue_s = time.monotonic() - t0
    info = cluster.wait_job(job, ("COMPLETED", "FAILED"), timeout=300)
    log = job_log(run_dir, job)
    assert info["JobState"] == "COMPLETED", log
    assert "received SIGUSR1, asking the ranks to checkpoint and stop" in log and "requeueing job" in log
    assert "start 2 on 2 node(s)" in log  # SLURM_RESTART_COUNT=1
    assert "Traceback" not in log and "resource_tracker" not in log  # every process got the signal: no noise
    [(step, mode, saved_world, world)] = resumes(run_dir)
    assert (mode, saved_world, world) == ("native", 2, 2) and 15 <= step < STEPS
    assert samples_by_step(run_dir) == samples_by_step(reference)  # nothing lost, nothing read twice
    print(f"requeue: signal -> first step of the next start in {requeue_s:.1f} s (incl. the start-now update)")


def test_time_limit_saves_before_the_kill_and_requeues(cluster, tiny_dataset):
    run_dir = cluster.base / "timelimit" / "run"
    args = overrides(run_dir, tiny_dataset, "train.max_steps=100000", "train.checkpoint_every=0")
    # Slurm sends the lead signal up to 60 s early: --time=3 with a 2-minute lead signals between 1 and 2 minutes
    # after the start, when the ranks are training (with --time=1 it could come during the pre-flight)
    job = submit(cluster, run_dir, tiny_dataset, "--time=3", "--signal=B:USR1@120", args=args)
    cluster.wait_job(job, ("PENDING",), restarts=1, timeout=240)
    cluster.run("scancel", str(job))
    log = job_log(run_dir, job)
    assert "received SIGUSR1" in log and "ranks exited with 75" in log and "requeueing job" in log, log
    from ptbr.checkpoint import layout

    saved = layout.newest_usable(run_dir / "checkpoints", print)
    assert saved is not None and saved.step > 0


def _rank_process(job: int, rank: int) -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "ptbr.train" in " ".join(proc.info["cmdline"] or []):
                env = proc.environ()
                if env.get("SLURM_JOB_ID") == str(job) and env.get("SLURM_PROCID") == str(rank):
                    return proc
        except psutil.Error:
            continue
    return None


def test_a_dead_rank_ends_the_job_and_a_resubmission_resumes(cluster, tiny_dataset):
    run_dir = cluster.base / "nodefail" / "run"
    job = submit(cluster, run_dir, tiny_dataset, args=overrides(run_dir, tiny_dataset, "train.checkpoint_every=5"))
    wait_for(lambda: last_step(run_dir) >= 12, timeout=180, what="step 12")
    victim = _rank_process(job, 1)
    assert victim is not None
    victim.kill()  # kill -9 of one task, as an OOM kill or a lost node would
    t0 = time.monotonic()
    info = cluster.wait_job(job, ("FAILED", "COMPLETED", "CANCELLED"), timeout=120)
    ended_s = time.monotonic() - t0
    assert info["JobState"] == "FAILED" and ended_s < 60, (info, ended_s)  # train.collective_timeout_s=60
    log = job_log(run_dir, job)
    assert "not requeueing" in log and "requeueing job" not in log
    from ptbr.checkpoint import layout

    last = layout.newest_usable(run_dir / "checkpoints", print)
    assert last is not None and last.step >= 5

    again = submit(cluster, run_dir, tiny_dataset, args=overrides(run_dir, tiny_dataset, "train.checkpoint_every=5"))
    info = cluster.wait_job(again, ("COMPLETED", "FAILED"), timeout=300)
    assert info["JobState"] == "COMPLETED", job_log(run_dir, again)
    assert resumes(run_dir) == [(last.step, "native", 2, 2)], (resumes(run_dir), job_log(run_dir, again))
    print(f"a killed rank ended the job in {ended_s:.1f} s")


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing config", "config file not found"),
        ("unknown preset", "model.preset: unknown preset '7b'"),
        ("unpublished data", "no manifest.json"),
        (
            "node count",
            "2 nodes cannot read a stream of 3 canonical nodes (one must divide the other); node counts "
            "that work at micro-batch 4, 1 GPU(s) per node: 1",
        ),
    ],
)
def test_bad_input_fails_before_srun_with_one_line(cluster, tiny_dataset, tmp_path, case, needle):
    run_dir = cluster.base / "bad" / case.replace(" ", "-") / "run"
    args, env = overrides(run_dir, tiny_dataset), {}
    if case == "missing config":
        args[1] = str(REPO / "configs" / "train" / "nope.yaml")
    elif case == "unknown preset":
        args.append("model.preset=7b")
    elif case == "unpublished data":
        args.append("data.source=s3://train-data/never-published")
    else:
        args.append("data.num_canonical_nodes=3")
    job = submit(cluster, run_dir, tiny_dataset, args=args, env=env, nodes=2 if case == "node count" else 1)
    info = cluster.wait_job(job, ("FAILED", "COMPLETED"), timeout=120)
    log = job_log(run_dir, job)
    assert info["JobState"] == "FAILED", log
    errors = [line for line in log.splitlines() if "error:" in line]
    assert len(errors) == 1 and needle in errors[0], log
    assert "Traceback" not in log and not list(run_dir.glob("logs/*/rank-*.log"))  # no rank ever started
    assert tiny_dataset.env["AWS_SECRET_ACCESS_KEY"] not in log


def test_an_unreachable_data_source_at_the_preflight_requeues_up_to_the_bound(cluster, tiny_dataset):
    """Exit 69 from the pre-flight is a data-source fault, not a config error: the job requeues (the source may be
    back after the requeue delay), at most PTBR_MAX_REQUEUES times. The endpoint is shown without credentials."""
    run_dir = cluster.base / "unreachable" / "run"
    env = {"S3_ENDPOINT_URL": "http://someone:hunter2@127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1", "PTBR_MAX_REQUEUES": "1"}
    job = submit(cluster, run_dir, tiny_dataset, env=env, nodes=1)
    cluster.wait_job(job, ("PENDING",), restarts=1, timeout=120)
    cluster.start_now(job)
    info = cluster.wait_job(job, ("FAILED", "COMPLETED"), timeout=120)
    log = job_log(run_dir, job)
    assert info["JobState"] == "FAILED" and int(info["Restarts"]) == 1, (info, log)
    assert log.count("the data source is unreachable (exit 69)") == 2, log
    assert log.count("requeueing job") == 1 and "not requeueing: already restarted 1 times" in log, log
    assert "S3 endpoint http://127.0.0.1:9" in log and "hunter2" not in log and "someone" not in log
    assert not list(run_dir.glob("logs/*/rank-*.log"))  # no rank ever started


def test_scancel_stops_the_job_with_a_checkpoint_and_no_requeue(cluster, tiny_dataset):
    run_dir = cluster.base / "scancel" / "run"
    job = submit(
        cluster,
        run_dir,
        tiny_dataset,
        args=overrides(run_dir, tiny_dataset, "train.max_steps=100000", "train.checkpoint_every=0"),
    )
    wait_for(lambda: last_step(run_dir) >= 5, timeout=180, what="step 5")
    cluster.run("scancel", str(job))
    info = cluster.wait_job(job, ("CANCELLED",), timeout=60)
    time.sleep(5)  # a requeue would show by now
    info = cluster.job(job)
    log = job_log(run_dir, job)
    assert info["JobState"] == "CANCELLED" and int(info["Restarts"]) == 0, (info, log)
    assert "received SIGTERM" in log and "requeueing job" not in log, log
    from ptbr.checkpoint import layout

    saved = layout.newest_usable(run_dir / "checkpoints", print)
    assert saved is not None and saved.step >= 5  # checkpointed where it was (checkpoint_every=0)


def test_scontrol_requeue_checkpoints_and_slurm_alone_requeues(cluster, tiny_dataset, reference):
    """What preemption with PreemptMode=REQUEUE does: SIGTERM, KillWait (10 s here), requeue. The ranks save
    before the kill, the script does not requeue a second time: one restart, which resumes the exact stream."""
    run_dir = cluster.base / "requeue" / "run"
    job = submit(cluster, run_dir, tiny_dataset)
    wait_for(lambda: last_step(run_dir) >= 15, timeout=180, what="step 15")
    cluster.run("scontrol", "requeue", str(job))
    cluster.wait_job(job, ("PENDING",), restarts=1, timeout=120)
    cluster.start_now(job)
    info = cluster.wait_job(job, ("COMPLETED", "FAILED"), timeout=400)
    log = job_log(run_dir, job)
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) == 1, (info, log)
    assert "received SIGTERM" in log and "requeueing job" not in log, log
    [(step, mode, _, _)] = resumes(run_dir)
    assert mode == "native" and step >= 15 and step % 10, step  # saved at the signal, not the periodic save
    assert samples_by_step(run_dir) == samples_by_step(reference)


def test_training_flags_reach_ptbr_train_and_paths_are_the_submitters(cluster, tiny_dataset, s3_server, tmp_path):
    """--resume PATH (relative to where sbatch ran), --allow-config-change and --allow-fresh-start go to `ptbr
    train`; --config is relative to the submit directory too; a data.cache_dir=... argument is kept."""
    from ptbr.checkpoint import layout
    from tests.helpers.fixtures import SEQ_LEN, VOCAB, build_and_publish

    base = cluster.base / "flags"
    run_dir = base / "run"
    first = submit(
        cluster,
        run_dir,
        tiny_dataset,
        args=overrides(run_dir, tiny_dataset, "train.max_steps=10", "train.checkpoint_every=5"),
        nodes=1,
    )
    assert cluster.wait_job(first, ("COMPLETED", "FAILED"))["JobState"] == "COMPLETED", job_log(run_dir, first)
    other = build_and_publish(
        tmp_path / "other", s3_server, "other-data", docs=300, seq_len=SEQ_LEN, vocab=VOCAB, val_fraction=0.05
    )  # another dataset: resuming on it is a config change
    # a config of the submitter's, beside the run: relative --config, relative --resume
    (base / "cfg" / "train").mkdir(parents=True)
    (base / "cfg" / "model").mkdir()
    shutil.copy(REPO / "configs" / "model" / "tiny.yaml", base / "cfg" / "model" / "tiny.yaml")
    shutil.copy(TINY, base / "cfg" / "train" / "mine.yaml")
    args = [
        "--config",
        "cfg/train/mine.yaml",
        "--resume",
        f"run/checkpoints/{layout.tag_for(5)}",
        "--allow-config-change",
        *overrides(run_dir, other, "train.max_steps=12")[2:],
        f"data.cache_dir={base}/usercache",
    ]
    second = cluster.sbatch(
        "--nodes=1",
        "--ntasks-per-node=1",
        *SMALL_JOB,
        f"--output={base}/job-%j.out",
        SCRIPT,
        *args,
        env={**tiny_dataset.env, "PYTHONPATH": str(REPO)},
        cwd=base,
    )
    info = cluster.wait_job(second, ("COMPLETED", "FAILED"), timeout=300)
    log = (base / f"job-{second}.out").read_text()
    assert info["JobState"] == "COMPLETED", log
    assert f"config {base}/cfg/train/mine.yaml --resume {base}/run/checkpoints/{layout.tag_for(5)}" in log
    assert "cache data.cache_dir from the command line" in log and list((base / "usercache").iterdir())
    assert resumes(run_dir)[-1][:2] == (5, "native")  # the given checkpoint, not the newest (step 10)
    # --allow-fresh-start: a run directory holding only an incomplete checkpoint
    fresh = base / "fresh"
    (fresh / "checkpoints" / layout.tag_for(3)).mkdir(parents=True)
    refused = submit(cluster, fresh, tiny_dataset, args=overrides(fresh, tiny_dataset, "train.max_steps=4"), nodes=1)
    assert cluster.wait_job(refused, ("COMPLETED", "FAILED"))["JobState"] == "FAILED"
    assert "none is complete" in job_log(fresh, refused)
    started = submit(
        cluster,
        fresh,
        tiny_dataset,
        args=[*overrides(fresh, tiny_dataset, "train.max_steps=4"), "--allow-fresh-start"],
        nodes=1,
    )
    assert cluster.wait_job(started, ("COMPLETED", "FAILED"))["JobState"] == "COMPLETED", job_log(fresh, started)
    assert last_step(fresh) == 4 and resumes(fresh) == []


def test_a_failed_job_shows_the_tail_of_the_failing_ranks(cluster, tiny_dataset):
    run_dir = cluster.base / "failing" / "run"
    args = overrides(run_dir, tiny_dataset, "debug.nonfinite_loss_at_steps=[1,2,3]", "train.max_nonfinite_in_row=3")
    job = submit(cluster, run_dir, tiny_dataset, args=args)
    info = cluster.wait_job(job, ("COMPLETED", "FAILED"), timeout=300)
    log = job_log(run_dir, job)
    assert info["JobState"] == "FAILED" and "ranks exited with 3" in log and "not requeueing" in log, log
    tail = log[log.index("Last lines of the ranks that reported an error:") :]
    assert "rank-0.log" in tail and "ptbr: error: stopping: 3 optimizer steps in a row" in tail, tail


def test_deepspeed_launcher_with_a_hostfile_trains_and_resumes(cluster, tiny_dataset):
    """One `deepspeed --no_ssh --node_rank N` launcher per node (srun), the hostfile generated from the
    allocation by launch/hostfile_from_slurm.py, under `ptbr supervise`."""
    run_dir = cluster.base / "deepspeed" / "run"
    run_dir.mkdir(parents=True)
    py = sys.executable
    train = " ".join(overrides(run_dir, tiny_dataset, f"data.cache_dir={cluster.base}/cache/$SLURMD_NODENAME"))
    body = (
        f"set -e; cd {REPO}; {py} launch/hostfile_from_slurm.py --out {run_dir.parent}/hostfile --slots 1; "
        f"srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c '{py} -m ptbr.cli supervise -- {py} -m "
        f"deepspeed.launcher.runner --hostfile {run_dir.parent}/hostfile --no_ssh --node_rank $SLURM_NODEID "
        f"--master_addr 127.0.0.1 --master_port $((20000 + SLURM_JOB_ID % 20000)) --module ptbr.train {train} "
        '"$@"\' _ '
    )
    for max_steps in (20, STEPS):  # train, then resume and finish
        job = cluster.sbatch(
            "--nodes=2",
            "--ntasks-per-node=1",
            *SMALL_JOB,
            f"--output={run_dir.parent}/job-%j.out",
            "--wrap",
            body + f"train.max_steps={max_steps}",
            env={**tiny_dataset.env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        )
        info = cluster.wait_job(job, ("COMPLETED", "FAILED"), timeout=300)
        assert info["JobState"] == "COMPLETED", job_log(run_dir, job)
    starts = [r for r in read_metrics(run_dir) if r["kind"] == "start"]
    assert [(s["launcher"], s["world_size"], s["num_nodes"]) for s in starts] == [("deepspeed", 2, 2)] * 2
    assert resumes(run_dir) == [(20, "native", 2, 2)] and last_step(run_dir) == STEPS
    assert (run_dir.parent / "hostfile").read_text() == "node1 slots=1\nnode2 slots=1\n"


@pytest.mark.parametrize(("before", "after"), [((2, 1), (1, 2)), ((1, 2), (2, 1))])
def test_resume_on_another_node_count_with_the_same_ranks_reads_the_same_stream(
    cluster, tiny_dataset, reference, before, after
):
    """(nodes, tasks per node): 2 nodes -> 1 node and back, the same 2 ranks (so a native resume: the elastic,
    other-world-size resume is tests/system/test_elastic_resume.py), the exact sample stream."""
    run_dir = cluster.base / f"elastic-{before[0]}to{after[0]}" / "run"
    first = submit(
        cluster,
        run_dir,
        tiny_dataset,
        args=overrides(run_dir, tiny_dataset, "train.max_steps=20"),
        nodes=before[0],
        per_node=before[1],
    )
    assert cluster.wait_job(first, ("COMPLETED", "FAILED"))["JobState"] == "COMPLETED", job_log(run_dir, first)
    second = submit(cluster, run_dir, tiny_dataset, nodes=after[0], per_node=after[1])
    info = cluster.wait_job(second, ("COMPLETED", "FAILED"), timeout=300)
    assert info["JobState"] == "COMPLETED", job_log(run_dir, second)
    assert resumes(run_dir) == [(20, "native", 2, 2)]
    starts = [r["num_nodes"] for r in read_metrics(run_dir) if r["kind"] == "start"]
    assert starts == [before[0], after[0]]
    assert samples_by_step(run_dir) == samples_by_step(reference)


def test_job_log_and_run_dir_hold_no_secret(cluster, tiny_dataset, reference):
    secret = tiny_dataset.env["AWS_SECRET_ACCESS_KEY"]
    for path in [*reference.parent.glob("job-*.out"), *reference.rglob("*")]:
        if path.is_file() and path.stat().st_size < 1 << 22:
            assert secret not in path.read_text(errors="ignore"), path
    assert json.loads((reference / "config.json").read_text())["data"]["source"] == tiny_dataset.url
