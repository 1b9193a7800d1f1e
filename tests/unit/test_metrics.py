"""MFU needs the card's peak: the table must pick the right variant of each card."""

from __future__ import annotations

import pytest
import torch

from ptbr.train.metrics import peak_tflops_for


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),  # SXM5
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA GH200 480GB", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L40", 181.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA RTX A6000", 155.0),
        ("NVIDIA GeForce RTX 4090", None),  # unknown: no MFU unless train.peak_tflops says
    ],
)
def test_peak_table_matches_the_variant(name: str, tflops: float | None):
    assert peak_tflops_for(name) == tflops


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_memory_figure_is_the_peak_of_its_logging_window():
    from ptbr.train.metrics import memory_gib

    memory_gib()  # closes whatever window came before
    big = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
    del big
    first = memory_gib()
    small = torch.empty(2**20, dtype=torch.uint8, device="cuda")
    second = memory_gib()
    del small
    assert first >= 0.5 > second
