"""The benchmark pieces in-process: suites, the scoring core on a small random RWKV-6, result records, the
lm_eval registration hook (a short subprocess)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from ptbr.bench import results as res
from ptbr.bench.scorer import ModelScorer
from ptbr.bench.scoring import continuation_logprobs, generate
from ptbr.bench.suites import SUITES, TASKS_DIR, task_names
from ptbr.model import RWKV6, RWKV6Config
from tests.helpers.train_harness import REPO, run_env


class Chars:
    """A character tokenizer (ids 1..), enough for the scorer."""

    def encode(self, text, add_special_tokens=False):
        return type("E", (), {"ids": [ord(c) % 95 + 1 for c in text]})()

    def decode(self, ids):
        return "".join(chr(i - 1 + 32) for i in ids)


@pytest.fixture(scope="module")
def scorer() -> ModelScorer:
    torch.manual_seed(0)
    cfg = RWKV6Config(n_layer=2, n_embd=64, head_size=16, vocab_size=128, mix_lora=8, decay_lora=8)
    model = RWKV6(cfg).eval()
    with torch.no_grad():  # the zero-initialised output projections would make every position alike
        for p in model.parameters():
            if p.dim() >= 2 and not p.abs().sum():
                p.normal_(0, 0.05)
    return ModelScorer(model, Chars(), eos_id=0, device=torch.device("cpu"))


def test_the_suite_yaml_lists_the_suite():
    assert yaml.safe_load((TASKS_DIR / "ptbr_core.yaml").read_text())["task"] == list(SUITES["ptbr_core"])
    assert task_names(None) == list(SUITES["ptbr_core"])
    assert task_names("a, b,a,,ptbr_core")[:2] == ["a", "b"] and len(task_names("a,ptbr_core")) == 7


def test_batched_chunked_scores_equal_one_sequence_at_a_time(scorer):
    torch.manual_seed(1)
    pairs = [
        ([0, *torch.randint(1, 128, (n,)).tolist()], torch.randint(1, 128, (m,)).tolist())
        for n, m in ((3, 4), (17, 2), (1, 9), (8, 8), (30, 1))
    ]
    got = continuation_logprobs(scorer, pairs, batch_size=2, chunk=4)
    for (ctx, cont), (lp, greedy) in zip(pairs, got):
        seq = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(scorer.model(seq[:, :-1]).double(), -1)[0]
        want = logp[len(ctx) - 1 :].gather(-1, seq[0, len(ctx) :, None]).sum()
        assert lp == pytest.approx(float(want), abs=1e-5)
        assert greedy == bool((logp[len(ctx) - 1 :].argmax(-1) == seq[0, len(ctx) :]).all())


def test_greedy_generation_stops_before_the_stop_string(scorer):
    free = generate(scorer, [5, 6, 7], until=[], max_tokens=20)
    assert len(free) == 20
    stop = free[7:9]
    cut = generate(scorer, [5, 6, 7], until=[stop], max_tokens=20)
    assert cut == free[: free.find(stop)] and stop not in cut


def test_records_tables_and_markdown():
    raw = {
        "results": {
            "t_mc": {
                "alias": "t_mc",
                "acc,none": 0.5,
                "acc_stderr,none": 0.1,
                "acc_norm,none": 0.75,
                "acc_norm_stderr,none": 0.1,
                "sample_len,none": 8,
            },
            "t_ppl": {"bits_per_byte,none": 3.5, "bits_per_byte_stderr,none": "N/A", "word_perplexity,none": 900.0},
        },
        "n-samples": {"t_mc": {"original": 8, "effective": 4}, "t_ppl": {"original": 2, "effective": 2}},
    }
    record = res.summarize(raw, {"export": "/e", "step": 10, "tokens": 320}, limit=4)
    assert record["tasks"]["t_mc"]["primary"] == "acc_norm" and record["tasks"]["t_ppl"]["primary"] == "bits_per_byte"
    assert "sample_len" not in record["tasks"]["t_mc"]["metrics"] and record["tasks"]["t_mc"]["samples"] == 4
    assert res.flat_scores(record) == {"t_mc/acc_norm": 0.75, "t_ppl/bits_per_byte": 3.5}
    table = res.comparison_table([record, record], ["a", "b"]).splitlines()
    assert table[0].split()[:2] == ["task", "metric"] and "0.7500 ± 0.1000" in table[2]
    assert "(lower is better)" in table[3]
    assert "| t_mc | acc_norm (primary) | 0.7500 | 0.1000 | 4 |" in res.markdown(record)
    older = {**record, "tasks": {"t_old": record["tasks"]["t_mc"]}}
    assert set(res.merged(older, record)["tasks"]) == {"t_mc", "t_ppl", "t_old"}


def test_the_hook_registers_ptbr_after_lm_evals_own_models():
    code = (
        "import ptbr.bench.lm_eval_hook as h; h.install(); "
        "from lm_eval.api.registry import model_registry as r; print('ptbr' in r, 'hf' in r, r._objs['ptbr'])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=run_env(), timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "ptbr.infer.harness:PtbrLM"]
