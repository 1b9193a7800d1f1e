"""RWKV-6 language model."""

from ptbr.config import RWKV6Config
from ptbr.model.rwkv6 import RWKV6, LayerState

__all__ = ["RWKV6", "RWKV6Config", "LayerState"]
