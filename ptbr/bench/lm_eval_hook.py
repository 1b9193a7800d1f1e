"""Makes the stock ``lm_eval`` command know ``--model ptbr``.

lm-evaluation-harness (0.4.13, and its main branch as of August 2026) finds a model name only in its own
registry: the ``MODEL_MAPPING`` of ``lm_eval/models/__init__.py`` and the classes whose ``@register_model``
ran in the same process. It reads no entry points (its ``Registry`` could hold an ``EntryPoint`` placeholder,
but nothing ever puts one there), so an installed package has no declarative way in. ptbr therefore installs
``ptbr-lm-eval.pth`` into site-packages (``setup.py``); at interpreter start it calls :func:`install`, which
puts a finder on ``sys.meta_path`` that does nothing until ``lm_eval.api.registry`` is imported, and then
registers ``ptbr`` as a lazy placeholder for ``ptbr.infer.harness:PtbrLM`` (after lm-eval's own mapping, which
``get_model`` would otherwise load only into an empty registry). Nothing of torch or ptbr beyond this module is
imported before the harness asks for the model. ``PTBR_LM_EVAL_HOOK=0`` turns it off.
"""

from __future__ import annotations

import os
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType

REGISTRY = "lm_eval.api.registry"
NAME, TARGET = "ptbr", "ptbr.infer.harness:PtbrLM"


def register(registry: ModuleType) -> None:
    """Add ``ptbr`` to lm-eval's model registry (lm-eval's own models first)."""
    import lm_eval.models  # noqa: F401 - registers lm-eval's MODEL_MAPPING as placeholders

    if NAME not in registry.model_registry:
        registry.model_registry.register(NAME, target=TARGET)


def _register_after(loader) -> None:
    run_module = loader.exec_module

    def exec_module(module: ModuleType) -> None:
        run_module(module)
        try:
            register(module)
        except Exception as exc:  # noqa: BLE001 - never break lm-eval itself
            print(f"[ptbr] warning: could not register --model ptbr with lm-eval: {exc}", file=sys.stderr)

    loader.exec_module = exec_module


class _RegistryFinder:
    """A meta-path finder (duck-typed: ``importlib.abc`` costs more to import than everything else here) that
    finds nothing itself: it wraps the loader of ``lm_eval.api.registry`` so that :func:`register` runs right
    after the module's own code."""

    def find_spec(self, fullname: str, path=None, target=None) -> ModuleSpec | None:
        if fullname != REGISTRY:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                _register_after(spec.loader)
                return spec
        return None


def install() -> None:
    """Called from ``ptbr-lm-eval.pth`` at interpreter start (idempotent)."""
    if os.environ.get("PTBR_LM_EVAL_HOOK", "1") == "0":
        return
    if REGISTRY in sys.modules:
        register(sys.modules[REGISTRY])
    elif not any(isinstance(f, _RegistryFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegistryFinder())
