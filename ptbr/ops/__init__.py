"""WKV6 operator backends: ``reference`` (sequential), ``torch`` (chunked), ``triton`` (GPU)."""

from ptbr.ops.wkv6 import BACKENDS, resolve_backend, wkv6

__all__ = ["BACKENDS", "resolve_backend", "wkv6"]
