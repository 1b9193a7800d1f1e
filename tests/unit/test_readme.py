"""Every command line in the README's code blocks goes through the real argument parser and config loader (no
work is done), so a renamed flag, command or config key breaks CI instead of a newcomer's first try."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from ptbr.cli import build_parser
from ptbr.errors import PtbrError
from ptbr.train.config import TrainConfig
from ptbr.train.entry import add_arguments
from tests.helpers.train_harness import REPO

# placeholders the README uses for the user's own values
PLACEHOLDERS = {"C": "configs/train/1b5.yaml", "CKPT": "runs/1b5", "RUN_DIR": "runs/1b5", "OUT_DIR": "exports/x"}
SLURM_FLAGS = {"--allow-config-change", "--allow-fresh-start"}


def readme_commands() -> list[tuple[int, list[str]]]:
    """(line number, argv) of every shell command in the README's bash code blocks and command table."""
    text = (REPO / "README.md").read_text()
    commands, in_bash, start, pending = [], False, 0, ""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("| `ptbr "):  # the "Every command" table: its example column
            example = re.findall(r"`([^`]+)`", line.split(" | ")[1])
            commands += [(number, shlex.split(e)) for e in example if e.startswith("ptbr ")]
        if line.startswith("```"):
            in_bash = line.strip() == "```bash" and not in_bash
            continue
        if not in_bash:
            continue
        code = line.split(" #", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
        if not pending:
            start = number
        pending += code
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            commands.append((start, shlex.split(pending.strip())))
        pending = ""
    return commands


def ptbr_invocations(argv: list[str]) -> list[list[str]]:
    """The ptbr argument lists inside one shell command: `ptbr ...`, the ranks' `-m ptbr.train ...` /
    `--module ptbr.train ...` under a launcher, and `ptbr supervise -- ...` around them."""
    found = []
    if argv[:1] == ["ptbr"]:
        found.append(argv[1:])
    for i, word in enumerate(argv):
        if word in ("-m", "--module") and i + 1 < len(argv) and argv[i + 1] == "ptbr.train":
            found.append(["train", *argv[i + 2 :]])
    return found


def check_train_config(args: list[str]) -> None:
    """Load the config a `ptbr train` line names, with its overrides (the README's configs exist in the repo)."""
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(args)
    config = PLACEHOLDERS.get(ns.config, ns.config)
    overrides = [o for o in ns.overrides if not o.startswith("data.source=")] + ["data.source=s3://x/y"]
    TrainConfig.load(REPO / config, overrides)


COMMANDS = readme_commands()


def test_the_readme_has_commands_to_check():
    assert sum(1 for _, argv in COMMANDS if ptbr_invocations(argv)) >= 25


@pytest.mark.parametrize(("line", "argv"), COMMANDS, ids=[f"README:{n}" for n, _ in COMMANDS])
def test_readme_command_parses(line: int, argv: list[str], monkeypatch):
    monkeypatch.chdir(REPO)
    parser = build_parser()
    for args in ptbr_invocations(argv):
        args = [PLACEHOLDERS.get(a, a) for a in args]
        if args[:1] == ["supervise"]:
            continue  # the launcher line after `--` is checked as its own invocation
        try:
            ns = parser.parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"README line {line}: `ptbr {shlex.join(args)}` is refused by the parser ({exc})")
        if args[:1] == ["train"]:
            try:
                check_train_config(args[1:])
            except PtbrError as exc:
                pytest.fail(f"README line {line}: {exc}")
        assert ns is not None
    if argv[:1] == ["sbatch"]:
        script = next(a for a in argv[1:] if a.endswith(".sh"))
        assert (REPO / script).is_file(), f"README line {line}: {script} does not exist"
        rest = argv[argv.index(script) + 1 :]
        config = "configs/train/" + Path(script).stem.removeprefix("train_") + ".yaml"
        overrides, i = [], 0
        while i < len(rest):
            if rest[i] in ("--config", "--resume"):
                config = rest[i + 1] if rest[i] == "--config" else config
                i += 2
                continue
            assert rest[i] in SLURM_FLAGS or "=" in rest[i], f"README line {line}: the job script refuses {rest[i]}"
            overrides += [rest[i]] if "=" in rest[i] else []
            i += 1
        try:
            TrainConfig.load(REPO / config, [*overrides, "data.source=s3://x/y"])
        except PtbrError as exc:
            pytest.fail(f"README line {line}: {exc}")
    for word in argv:  # scripts the README runs exist
        if re.fullmatch(r"(tools|launch|benchmarks|slurm)/[\w./-]+\.(py|sh)", word):
            assert (REPO / word).is_file(), f"README line {line}: {word} does not exist"
