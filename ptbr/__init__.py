"""ptbr: distributed training of RWKV-6 language models on Brazilian Portuguese text."""

__version__ = "0.1.0"
