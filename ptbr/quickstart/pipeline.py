"""``ptbr quickstart``: every stage of ptbr, on this machine, in one command.

corpus (Debian pt-BR packages, or ``--corpus``) -> tokenizer -> cleaning + MDS shards -> local S3 server
(SeaweedFS on 127.0.0.1) -> ``ptbr shards verify`` -> 2 gloo ranks under ZeRO-2 streaming from S3,
with evaluation and checkpoints -> export -> GGUF for llama.cpp -> generate -> eval -> loss plot.

Each stage runs the same ``ptbr`` command a user would type (printed before it runs), so the output
doubles as a tour of the CLI. A second run reuses what is there: the corpus, tokenizer and shards are
skipped when present (``shards build`` and ``shards publish`` are idempotent themselves), training
resumes from its newest checkpoint (and does nothing when it is finished), the export is redone only
for a newer checkpoint. The S3 server is this process's child, stopped on exit, on Ctrl-C and on
SIGTERM.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ptbr.dist import free_port
from ptbr.errors import PtbrError

REPO = Path(__file__).resolve().parents[2]
BUCKET = "ptbr"
PROMPT = "O Debian é um sistema operacional"
STOP_GRACE_S = 120  # how long an interrupted stage may take to stop (a training run saves a checkpoint first)


@dataclass
class Settings:
    work: Path
    corpus: Path | None = None  # None: the Debian packages
    config: str = "configs/train/quickstart.yaml"
    vocab_size: int = 8192
    seq_len: int = 256
    ranks: int = 2
    overrides: list[str] = field(default_factory=list)
    max_tokens: int = 80


class Quickstart:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.work = settings.work.resolve()
        self.t0 = time.monotonic()
        # The quickstart is the CPU walk-through: with a GPU visible its ranks would share it (one GPU per rank
        # under NCCL), so every stage runs with the GPUs hidden, as README command 1 promises.
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
        self.server = None
        self.done: list[tuple[str, str]] = []  # (stage, what happened)

    # ------------------------------------------------------------------ plumbing
    def say(self, msg: str) -> None:
        print(f"[quickstart {time.monotonic() - self.t0:6.0f}s] {msg}", flush=True)

    def ptbr(self, *args: str, env: dict[str, str] | None = None, capture: bool = False) -> str:
        """Run ``ptbr ARGS`` as a user would (the command is printed first)."""
        return self.command(
            [sys.executable, "-m", "ptbr.cli", *args], shown=f"ptbr {shlex.join(args)}", env=env, capture=capture
        )

    def command(self, cmd: list[str], shown: str, env: dict[str, str] | None = None, capture: bool = False) -> str:
        print(f"\n$ {shown}", flush=True)
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env or self.env, text=True, stdout=subprocess.PIPE if capture else None
        )
        try:
            stdout, _ = proc.communicate()
        except KeyboardInterrupt:  # stop the stage the way a scheduler would: training checkpoints and exits
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        if proc.returncode != 0:
            raise PtbrError(
                f"`{shown}` failed with exit code {proc.returncode} (its output is above); fix that and "
                "run the quickstart again: finished stages are reused"
            )
        return stdout or ""

    # ------------------------------------------------------------------ stages
    def corpus(self) -> Path:
        if self.s.corpus is not None:
            path = self.s.corpus.resolve()
            if not path.exists():
                raise PtbrError(f"--corpus {path} does not exist")
            size = sum(f.stat().st_size for f in (path.rglob("*") if path.is_dir() else [path]) if f.is_file())
            self.say(f"corpus: your files in {path} ({size / 1e6:.1f} MB)")
            self.done.append(("corpus", f"{path} (yours)"))
            return path
        from ptbr.quickstart.corpus import fetch_debian_corpus

        out = self.work / "corpus"
        reused = (out / "SOURCES.json").is_file()
        sources = fetch_debian_corpus(out, self.say)
        total = sum(p["bytes"] for p in sources["packages"].values())
        docs = sum(p["documents"] for p in sources["packages"].values())
        packages = ", ".join(f"{name} {meta['version']}" for name, meta in sources["packages"].items())
        self.say(
            f"corpus: {'reusing ' if reused else ''}{docs:,} documents, {total / 1e6:.1f} MB of Brazilian "
            f"Portuguese from the Debian packages {packages} (see {out / 'SOURCES.json'})"
        )
        self.done.append(("corpus", f"{out} ({'reused' if reused else 'downloaded'})"))
        return out

    def tokenizer(self, corpus: Path) -> Path:
        out = self.work / "tokenizer.json"
        if out.is_file():
            self.say(f"tokenizer: reusing {out}")
            self.done.append(("tokenizer", f"{out} (reused)"))
            return out
        self.ptbr(
            "tokenizer", "train", "--input", str(corpus), "--output", str(out), "--vocab-size", str(self.s.vocab_size)
        )
        self.done.append(("tokenizer", str(out)))
        return out

    def shards(self, corpus: Path, tokenizer: Path) -> Path:
        out = self.work / "shards"
        self.ptbr(
            "shards",
            "build",
            "--input",
            str(corpus),
            "--tokenizer",
            str(tokenizer),
            "--output",
            str(out),
            "--seq-len",
            str(self.s.seq_len),
            "--val-fraction",
            "0.02",
            "--shard-size",
            "1mb",
            "--clean",
        )
        self.done.append(("cleaning report", str(out.with_name("shards.cleaned") / "report.json")))
        self.done.append(("shards", str(out)))
        return out

    def start_s3(self) -> None:
        from ptbr.devtools.local_s3 import LocalS3Server

        self.server = LocalS3Server(self.work / "s3").start()
        self.server.create_bucket(BUCKET)
        self.env.update(self.server.env())  # endpoint and keys for the children; never printed
        self.say(
            f"S3: SeaweedFS serving s3://{BUCKET} at {self.server.endpoint_url} (data in {self.work / 's3'}, "
            "stopped when the quickstart ends)"
        )

    def publish(self, shards: Path) -> str:
        url = f"s3://{BUCKET}/quickstart/v1"
        self.ptbr("shards", "publish", str(shards), url)
        self.ptbr("shards", "verify", url)
        self.done.append(("published", f"{url} (_SUCCESS written last)"))
        return url

    def train(self, url: str) -> Path:
        run_dir = self.work / "run"
        args = [
            "--config",
            self.s.config,
            f"data.source={url}",
            f"train.run_dir={run_dir}",
            f"data.cache_dir={self.work / 'cache'}",
            *self.s.overrides,
        ]
        from ptbr.checkpoint import layout

        before = layout.newest_usable(run_dir / "checkpoints", lambda _m: None)
        if before is not None:
            self.say(f"train: resuming from {before.path.name} (what is done is not trained again)")
        launcher = [
            "torch.distributed.run",
            "--nproc_per_node",
            str(self.s.ranks),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "-m",
            "ptbr.train",
        ]
        env = {**self.env, "OMP_NUM_THREADS": "1"}
        self.command(
            [sys.executable, "-m", "ptbr.cli", "supervise", "--", sys.executable, "-m", *launcher, *args],
            shown=f"ptbr supervise -- torchrun {shlex.join(launcher[1:] + args)}",
            env=env,
        )
        after = layout.newest_usable(run_dir / "checkpoints", lambda _m: None)
        if after is None:
            raise PtbrError(f"training ended without a committed checkpoint in {run_dir / 'checkpoints'}")
        what = (
            "already finished: nothing to train"
            if before and before.step == after.step
            else f"trained to step {after.step}"
        )
        self.done.append(("training run", f"{run_dir} ({what}; checkpoint {after.path.name})"))
        return run_dir

    def export(self, run_dir: Path) -> Path:
        from ptbr.checkpoint import layout

        out = self.work / "export"
        newest = layout.newest_usable(run_dir / "checkpoints", lambda _m: None)
        cfg = out / "config.json"
        if cfg.is_file() and json.loads(cfg.read_text()).get("step") == newest.step:
            self.say(f"export: reusing {out} (step {newest.step})")
        else:
            self.ptbr("export", str(run_dir), str(out), "--dtype", "fp32", "--overwrite")
        self.done.append(("exported weights", f"{out / 'model.safetensors'} (+ config.json, tokenizer.json)"))
        return out

    def gguf(self, model: Path) -> Path:
        """The export as one GGUF file for llama.cpp (f16), redone only for a newer step."""
        out = self.work / "gguf"
        step = json.loads((model / "config.json").read_text()).get("step")
        if _gguf_step(out / "model.gguf") == step:
            self.say(f"gguf: reusing {out / 'model.gguf'} (step {step})")
        else:
            self.ptbr("export", str(model), str(out), "--format", "gguf", "--dtype", "f16", "--overwrite")
        self.done.append(("GGUF for llama.cpp", f"{out / 'model.gguf'} (f16, tokenizer inside)"))
        return out / "model.gguf"

    def generate(self, model: Path) -> str:
        text = self.ptbr(
            "generate",
            str(model),
            "--prompt",
            PROMPT,
            "--max-tokens",
            str(self.s.max_tokens),
            "--temperature",
            "0.8",
            "--top-p",
            "0.9",
            "--seed",
            "1",
            capture=True,
        )
        print(text, flush=True)
        (self.work / "generated.txt").write_text(text)
        self.done.append(("generated text", str(self.work / "generated.txt")))
        return text

    def evaluate(self, model: Path, url: str) -> dict:
        out = self.ptbr("eval", str(model), "--data", url, "--max-samples", "64", "--json", capture=True)
        result = json.loads(out.strip().splitlines()[-1])
        print(
            f"validation: loss {result['loss']:.3f}, perplexity {result['ppl']:.1f}, "
            f"{result['bits_per_byte']:.3f} bits per byte",
            flush=True,
        )
        (self.work / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
        self.done.append(("evaluation", str(self.work / "eval.json")))
        return result

    def plot(self, run_dir: Path) -> None:
        self.ptbr("plot", str(run_dir))
        self.done.append(("loss plot", str(run_dir / "plots")))

    # ------------------------------------------------------------------ the whole
    def run(self) -> int:
        self.work.mkdir(parents=True, exist_ok=True)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        # Ctrl-C must stop the quickstart (and its S3 server) even when it was started from a shell that
        # ignores SIGINT for background jobs (nohup, CI runners): the ignored disposition is inherited
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            corpus = self.corpus()
            tokenizer = self.tokenizer(corpus)
            shards = self.shards(corpus, tokenizer)
            self.start_s3()
            url = self.publish(shards)
            run_dir = self.train(url)
            model = self.export(run_dir)
            gguf = self.gguf(model)
            self.generate(model)
            self.evaluate(model, url)
            self.plot(run_dir)
        finally:
            if self.server is not None:
                self.server.stop()
                self.say("S3: server stopped")
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
        self.summary(url, run_dir, model, gguf)
        return 0

    def summary(self, url: str, run_dir: Path, model: Path, gguf: Path) -> None:
        width = max(len(k) for k, _ in self.done)
        print(f"\nquickstart finished in {time.monotonic() - self.t0:.0f} s. Everything is under {self.work}:")
        for stage, what in self.done:
            print(f"  {stage:<{width}}  {what}")
        w = shlex.quote(str(self.work))
        in_python = (
            f"from llama_cpp import Llama; llm = Llama({json.dumps(str(gguf))}, verbose=False); "
            'print(llm("A Constituição Federal", max_tokens=100)["choices"][0]["text"])'
        )
        print(f"""
Next, try (after `source {shlex.quote(str(Path(sys.executable).parent / "activate"))}`, which puts `ptbr` on PATH):
  ptbr generate {w}/export --prompt "A Constituição Federal" --max-tokens 100   # more text
  ptbr info                                                                    # presets and their sizes
  bash launch/quickstart.sh --corpus DIR                                       # the same on your own .txt/.jsonl
  ptbr train --dry-run --config configs/train/1b5.yaml data.source=s3://BUCKET/PREFIX   # plan a real run
  sbatch slurm/train_1b5.sh data.source=s3://BUCKET/PREFIX                     # train it on a Slurm cluster
Run the GGUF in llama.cpp (its llama-completion program; `llama-cli -no-cnv` in older builds), or through
llama-cpp-python, which the environment above already has:
  llama-completion -m {shlex.quote(str(gguf))} -no-cnv -p "A Constituição Federal" -n 100
  python -c {shlex.quote(in_python)}
The shards stay in the local S3 data directory ({self.work / "s3"}); `python tools/s3_server.py start --dir
{self.work / "s3"} --background` serves them again ({url}).""")


def _gguf_step(path: Path) -> int | None:
    """The training step a GGUF export records (ptbr.step), or None when there is none."""
    if not path.is_file():
        return None
    import gguf

    field = gguf.GGUFReader(path).fields.get("ptbr.step")
    return None if field is None else int(field.contents())


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
