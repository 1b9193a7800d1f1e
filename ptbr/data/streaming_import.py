"""Importing mosaicml-streaming without the dataset classes it bundles.

``import streaming`` imports ``streaming.text``, ``streaming.vision`` and ``streaming.multimodal`` (C4, Pile,
ImageNet, ... dataset classes that ptbr never uses). They pull in transformers' AutoTokenizer, scikit-learn,
torchvision's models and torch._dynamo: 2-4 s of CPU in every rank, before any work, and again in every
spawned DataLoader worker. :func:`defer_bundled_datasets` registers the three packages as placeholders that
load the real package the first time one of its names is used, so code that does use them sees no change.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

BUNDLED = ("text", "vision", "multimodal")


def _placeholder(name: str, init: Path) -> types.ModuleType:
    """A package whose submodules import as usual and whose own names load its ``__init__`` on first use."""
    module = types.ModuleType(name, f"placeholder for {name}; loaded on first use (ptbr.data.streaming_import)")
    module.__path__ = [str(init.parent)]

    def load_on_first_use(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
        real = importlib.util.module_from_spec(spec)
        sys.modules[name] = real
        spec.loader.exec_module(real)
        setattr(sys.modules["streaming"], name.rsplit(".", 1)[1], real)
        return getattr(real, attr)

    module.__getattr__ = load_on_first_use  # PEP 562: called only for names the placeholder lacks
    return module


def defer_bundled_datasets() -> None:
    """Call before the first ``import streaming`` (ptbr.data does); does nothing once streaming is imported."""
    if "streaming" in sys.modules:
        return
    spec = importlib.util.find_spec("streaming")  # locates the package without importing it
    if spec is None or spec.origin is None:
        return
    root = Path(spec.origin).parent
    for sub in BUNDLED:
        name, init = f"streaming.{sub}", root / sub / "__init__.py"
        if init.is_file() and name not in sys.modules:
            sys.modules[name] = _placeholder(name, init)
