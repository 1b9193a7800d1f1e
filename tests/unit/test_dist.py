"""Rank placement: several ranks on one GPU are refused in one line (NCCL needs a GPU per rank)."""

from __future__ import annotations

from ptbr.dist import shared_gpu_problem


def test_one_gpu_per_rank_passes():
    assert shared_gpu_problem([("n1", "GPU-a"), ("n1", "GPU-b"), ("n2", "GPU-a"), ("n2", "GPU-b")]) is None
    # srun --gpus-per-task=1: every task sees its own GPU as cuda:0, the uuids differ
    assert shared_gpu_problem([("n1", "GPU-0"), ("n1", "GPU-1")]) is None


def test_two_ranks_on_one_gpu_are_refused_with_the_fix():
    problem = shared_gpu_problem([("ws", "GPU-x"), ("ws", "GPU-x")])  # a 2-rank command on a 1-GPU workstation
    assert problem is not None and "\n" not in problem
    assert problem.startswith("ranks 0 and 1 share one GPU on ws (1 GPU(s) for 2 ranks)")
    assert "start 1 rank(s) per node" in problem and "CUDA_VISIBLE_DEVICES=" in problem
