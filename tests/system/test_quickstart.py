"""The quickstart, end to end in a reduced form (tiny model, few steps, small corpus), run twice; Ctrl-C
stops its S3 server; the Debian corpus extraction on real packages and on made-up inputs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers.train_harness import REPO, wait_for

REDUCED = (
    "--config",
    "configs/train/tiny_cpu.yaml",
    "--vocab-size",
    "512",
    "--seq-len",
    "32",
    "--max-tokens",
    "24",
    "train.max_steps=12",
    "train.checkpoint_every=6",
    "train.eval_every=6",
    "train.log_every=3",
)


def sample_corpus(root: Path) -> Path:
    from ptbr.devtools.sample_text import portuguese_documents

    root.mkdir(parents=True)
    docs = portuguese_documents(300, seed=5)
    (root / "textos.jsonl").write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs))
    return root


def quickstart(work: Path, corpus: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "ptbr.cli",
        "quickstart",
        "--work",
        str(work),
        "--corpus",
        str(corpus),
        *REDUCED,
        *extra,
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


def weed_processes(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.info["name"] == "weed" and str(data_dir) in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
def test_quickstart_runs_every_stage_and_a_second_run_reuses_them(tmp_path):
    from safetensors.torch import load_file

    from ptbr.checkpoint import layout
    from ptbr.data.store import open_store

    work, corpus = tmp_path / "qs", sample_corpus(tmp_path / "corpus")
    first = quickstart(work, corpus)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    out = first.stdout
    for command in (
        "$ ptbr tokenizer train",
        "$ ptbr shards build",
        "$ ptbr shards publish",
        "$ ptbr shards verify",
        "$ ptbr supervise -- torchrun",
        "$ ptbr export",
        "$ ptbr generate",
        "$ ptbr eval",
        "$ ptbr plot",
    ):
        assert command in out, command
    # the artifacts it promises
    s3_dir = work / "s3"
    assert not weed_processes(s3_dir), "the S3 server outlived the quickstart"
    ckpt = layout.newest_usable(work / "run" / "checkpoints", print)
    assert ckpt is not None and ckpt.step == 12
    weights = load_file(str(work / "export" / "model.safetensors"))
    assert "emb.weight" in weights and json.loads((work / "export" / "config.json").read_text())["step"] == 12
    from ptbr.quickstart.pipeline import PROMPT

    generated = (work / "generated.txt").read_text()
    assert generated.startswith(PROMPT) and len(generated.strip()) > len(PROMPT)
    assert json.loads((work / "eval.json").read_text())["loss"] > 0
    assert list((work / "run" / "plots").glob("*.png"))
    assert "quickstart finished" in out and str(work / "export" / "model.safetensors") in out
    # the GGUF, and the llama.cpp commands the summary prints: the llama-cpp-python one runs as printed
    assert "$ ptbr export" in out and "--format gguf" in out and (work / "gguf" / "model.gguf").is_file()
    assert f"llama-completion -m {work / 'gguf' / 'model.gguf'}" in out
    [python_cmd] = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("python -c ")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    ran = subprocess.run(python_cmd, shell=True, capture_output=True, text=True, env=env, timeout=120)
    assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr[-2000:]
    assert "AWS_SECRET_ACCESS_KEY" not in out + first.stderr

    # the shards were published with _SUCCESS: check on a server started again on the same data
    from ptbr.devtools.local_s3 import LocalS3Server

    with LocalS3Server(s3_dir) as server:
        os.environ.update(server.env())
        try:
            assert open_store("s3://ptbr/quickstart/v1").get("_SUCCESS")
        finally:
            for key in server.env():
                os.environ.pop(key, None)

    # a second run reuses everything: no new checkpoint, no new export
    export_mtime = (work / "export" / "model.safetensors").stat().st_mtime
    t0 = time.monotonic()
    second = quickstart(work, corpus)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert "tokenizer: reusing" in second.stdout and "train: resuming from step_00000012" in second.stdout
    assert "already finished: nothing to train" in second.stdout and "export: reusing" in second.stdout
    assert "gguf: reusing" in second.stdout
    assert (work / "export" / "model.safetensors").stat().st_mtime == export_mtime
    assert layout.newest_usable(work / "run" / "checkpoints", print).step == 12
    assert (work / "generated.txt").read_text() == generated  # same seed, same weights, same text
    print(f"second quickstart run: {time.monotonic() - t0:.0f} s")


@pytest.mark.slow
def test_ctrl_c_stops_the_s3_server(tmp_path):
    work, corpus = tmp_path / "qs", sample_corpus(tmp_path / "corpus")
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ptbr.cli",
                "quickstart",
                "--work",
                str(work),
                "--corpus",
                str(corpus),
                *REDUCED,
                "train.max_steps=100000",
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: "ptbr supervise -- torchrun" in log.read_text(), timeout=300, what="training to start")
        assert weed_processes(work / "s3")
        time.sleep(3)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "S3: server stopped" in log.read_text()
    wait_for(lambda: not weed_processes(work / "s3"), timeout=10, what="the S3 server to exit")
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])  # no rank left behind (they may ignore SIGINT)
        if str(work) in " ".join(p.info["cmdline"] or []) and "ptbr.train" in " ".join(p.info["cmdline"] or [])
    ]


# ------------------------------------------------------------------------------- the Debian corpus
def test_corpus_extraction_of_each_format():
    from ptbr.quickstart.corpus import fortunes, html_documents, roff_document, text_sections

    page = (
        "<html><head><title>x</title><style>p{}</style></head><body><nav>Início | Próximo</nav>"
        "<h2>1. Introdução</h2><p>O sistema &eacute; livre\ne gratuito.</p><script>var a;</script>"
        "<h2>2. Instalação</h2><ul><li>Baixe a imagem.</li><li>Grave no pen-drive.</li></ul></body></html>"
    )
    docs = [d for d in html_documents(page.encode()) if d]
    assert docs == [
        "1. Introdução\n\nO sistema é livre e gratuito.",
        "2. Instalação\n\nBaixe a imagem.\n\nGrave no pen-drive.",
    ]
    man = (
        '.\\" comment\n.TH ls 1\n.SH NOME\nls \\- lista o conteúdo\n.SH DESCRIÇÃO\nO \\fBls\\fP mostra '
        "arquivos.\n.PP\nSegundo\nparágrafo.\n"
    ).encode()
    assert roff_document(man) == (
        "NOME\n\nls - lista o conteúdo\n\nDESCRIÇÃO\n\nO ls mostra arquivos.\n\nSegundo parágrafo."
    )
    latin1 = "Título\n------\n\n     Uma seção em\n     ISO-8859-1.\n\nOutra\n-----\n\n     Texto.\n".encode("latin-1")
    assert list(text_sections(latin1)) == ["Título\n\nUma seção em ISO-8859-1.", "Outra\n\nTexto."]
    assert list(fortunes(b"Primeira.\n%\nSegunda\nlinha.\n%\n")) == ["Primeira.", "Segunda\nlinha."]


@pytest.mark.slow
def test_debian_packages_become_a_portuguese_corpus(tmp_path):
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        pytest.skip("apt-get/dpkg-deb missing: not a Debian machine")
    from ptbr.errors import PtbrError
    from ptbr.quickstart.corpus import fetch_debian_corpus

    try:
        sources = fetch_debian_corpus(tmp_path / "corpus", print, packages=("fortunes-br", "manpages-pt-br"))
    except PtbrError as exc:  # only an unreachable archive (apt's own network errors) skips; under CI it fails
        if re.search(
            r"apt-get \w+ .* failed \((Could not resolve|Failed to fetch|Temporary failure|Unable to "
            r"connect|Connection (timed out|refused))",
            str(exc),
        ):
            pytest.skip(f"the Debian archive is not reachable here: {exc}")
        raise
    assert set(sources["packages"]) == {"fortunes-br", "manpages-pt-br"}
    for name in ("fortunes-br", "manpages-pt-br"):
        lines = (tmp_path / "corpus" / f"{name}.jsonl").read_text().splitlines()
        assert len(lines) == sources["packages"][name]["documents"] > 50
        texts = [json.loads(line)["text"] for line in lines]
        assert all(len(t) >= 80 for t in texts)
        joined = " ".join(texts)
        assert joined.count(" não ") > 20 and "\\fB" not in joined and "\ufffd" not in joined
    again = fetch_debian_corpus(tmp_path / "corpus", print)  # SOURCES.json: not downloaded again
    assert again == sources
