"""Print the import graph between ptbr's packages, and check the layer rule of docs/architecture.md.

    python tools/import_graph.py            # package edges (A -> B: some module of A imports B)
    python tools/import_graph.py --modules  # module edges
    python tools/import_graph.py --check    # exit 1 on an import against the layer rule or a module cycle

Every ``import`` counts, also those inside functions (a lazy import is still a dependency). The rule: a
package imports only packages of lower layers (:data:`LAYERS`), never one of its own layer or above, apart
from the few module-level exceptions in :data:`ALLOWED`; and no two modules import each other.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lower numbers are lower layers. Same-layer packages are independent of each other (training does not
# import inference, cleaning does not import training).
LAYERS: dict[str, int] = {
    # foundation: used by all, use nothing of ptbr
    "ptbr": 0,
    "ptbr.errors": 0,
    "ptbr.fsutil": 0,
    "ptbr.log": 0,
    "ptbr.progress": 0,
    # shared services: configuration machinery, process placement, the WKV operator
    "ptbr.config": 1,
    "ptbr.dist": 1,
    "ptbr.ops": 1,
    # building blocks (bench: the lm-evaluation-harness model over any scorer, used by training's bench_every
    # and by inference's ``ptbr bench`` alike, so it may depend on neither)
    "ptbr.model": 2,
    "ptbr.data": 2,
    "ptbr.checkpoint": 2,
    "ptbr.bench": 2,
    # capabilities
    "ptbr.train": 3,
    "ptbr.infer": 3,
    "ptbr.clean": 3,
    "ptbr.devtools": 3,
    # whole-pipeline tour, then the command line
    "ptbr.quickstart": 4,
    "ptbr.commands": 5,
    "ptbr.cli": 6,
}
# (importing module or package, imported module): exceptions to the rule, each with its reason
ALLOWED: dict[tuple[str, str], str] = {
    ("ptbr.checkpoint.run_state", "ptbr.data.hashing"): "one sha256 helper for every identity hash",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """ptbr modules that ``path`` imports (``from ptbr.x import y`` counts y when it is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # ``from pkg import submodule`` depends on the submodule; ``from pkg import name`` on pkg
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name != me:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    files = sorted((ROOT / "ptbr").rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or (ROOT / Path(*parts)).is_dir() else module


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def layer_of(module: str) -> tuple[str, int] | None:
    """The layered package a module belongs to (its longest prefix in :data:`LAYERS`)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in LAYERS:
            return name, LAYERS[name]
    return None


def violations(edges: dict[str, set[str]]) -> list[str]:
    """Imports against the layer rule, one line each (``importer -> imported: why``)."""
    found = []
    for module, targets in sorted(edges.items()):
        mine = layer_of(module)
        if mine is None:
            found.append(f"{module}: not in any layer (add its package to LAYERS in tools/import_graph.py)")
            continue
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs is None or theirs[0] == mine[0] or theirs[1] < mine[1]:
                continue
            if (module, target) in ALLOWED or (mine[0], target) in ALLOWED:
                continue
            where = "its own layer" if theirs[1] == mine[1] else "a higher layer"
            found.append(f"{module} -> {target}: {theirs[0]} is in {where} ({theirs[1]}) than {mine[0]} ({mine[1]})")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", action="store_true", help="module edges instead of package edges")
    parser.add_argument("--check", action="store_true", help="only check the layer rule and cycles (exit 1)")
    args = parser.parse_args()
    edges = graph()
    if args.check:
        problems = violations(edges) + [" <-> ".join(c) + ": import cycle" for c in cycles(edges)]
        for line in problems:
            print(line)
        print(f"layer rule: {len(problems)} violation(s)")
        return 1 if problems else 0
    if args.modules:
        for m in sorted(edges):
            print(f"{m} -> {', '.join(sorted(edges[m])) or '-'}")
    else:
        packages: dict[str, set[str]] = defaultdict(set)
        for m, targets in edges.items():
            for t in targets:
                if package_of(t) != package_of(m):
                    packages[package_of(m)].add(package_of(t))
        for p in sorted({package_of(m) for m in edges}):
            print(f"{p} -> {', '.join(sorted(packages[p])) or '-'}")
    found = cycles(edges)
    print(f"module cycles: {len(found)}")
    for comp in found:
        print("  " + " <-> ".join(comp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
