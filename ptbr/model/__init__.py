"""RWKV-6 language model: its configuration (presets, sizes) and the network."""

from ptbr.model.config import PRESETS, RWKV6Config
from ptbr.model.rwkv6 import RWKV6, LayerState, count_parameters

__all__ = ["PRESETS", "RWKV6", "RWKV6Config", "LayerState", "count_parameters"]
