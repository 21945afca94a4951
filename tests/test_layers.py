"""The import contract: layers with one direction of imports, no cycles, no hidden imports.

    building blocks -> methods -> pipeline -> runners -> reports -> cli

A module may import only from its own layer or lower ones, only at module level (an import inside
a function would hide a cycle), and the import graph has no cycle at all. Every module of the three
packages must be placed in a layer here, so a new file is a conscious choice.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "methods", "attacks")

LAYERS: dict[str, tuple[str, ...]] = {
    "blocks": (
        "benchmark", "benchmark.errors", "benchmark.registry", "benchmark.io", "benchmark.data", "benchmark.data_files",
        "benchmark.augment", "benchmark.models", "benchmark.optim", "benchmark.ddp",
        "benchmark.checkpoints", "benchmark.devices", "benchmark.inference", "benchmark.labels", "benchmark.released", "methods.losses",
        "attacks*",
        "benchmark.corruptions", "benchmark.corruption_ops",
        "benchmark.kmeans",
    ),
    "methods": ("methods", "methods.*"),
    "pipeline": (
        "benchmark.config", "benchmark.schemes*", "benchmark.finetune", "benchmark.evaluate",
        "benchmark.pretrain", "benchmark.store", "benchmark.stage", "benchmark.stages", "benchmark.records",
        "benchmark.pipeline", "benchmark.pseudolabels", "benchmark.protocols", "benchmark.imports",
        "benchmark.teacher",
        "benchmark.postprocess",
    ),
    "runners": ("benchmark.suite", "benchmark.executors", "benchmark.distributed"),
    "reports": ("benchmark.leaderboard", "benchmark.leaderboard_types", "benchmark.leaderboard_reported",
                "benchmark.render", "benchmark.report", "benchmark.perf", "benchmark.perf_measure",
                "benchmark.perf_epoch"),
    "cli": ("benchmark.cli", "benchmark.cli_common"),
}
ORDER = list(LAYERS)


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = f
    return out


def layer_of(module: str) -> str | None:
    best = None
    for layer, patterns in LAYERS.items():
        for p in patterns:
            exact = p == module
            prefix = p.endswith("*") and (module == p[:-1] or module.startswith(p[:-1].rstrip(".") + "."))
            if exact or (prefix and best is None):
                if exact:
                    return layer
                best = layer
    return best


def imports(path: Path, known: dict[str, Path]) -> list[tuple[str, bool, int]]:
    """(imported project module, at module level?, line) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    for n in tree.body:  # imports under `if TYPE_CHECKING:` / version checks count as top level
        if isinstance(n, (ast.If, ast.Try)):
            top |= {id(c) for c in ast.walk(n)}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                out.append((name, id(node) in top, node.lineno))
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {t for t, _, _ in imports(f, known) if t != m} for m, f in known.items()}


def test_every_module_has_a_layer() -> None:
    assert [m for m in modules() if layer_of(m) is None] == []


def test_imports_go_down_the_layers() -> None:
    known = modules()
    wrong = []
    for m, f in known.items():
        for target, _, line in imports(f, known):
            if target != m and ORDER.index(layer_of(target)) > ORDER.index(layer_of(m)):
                wrong.append(f"{f.relative_to(ROOT)}:{line} ({layer_of(m)}) imports {target} ({layer_of(target)})")
    assert wrong == []


def test_no_project_import_inside_a_function() -> None:
    known = modules()
    hidden = [f"{f.relative_to(ROOT)}:{line} imports {t}" for m, f in known.items()
              for t, top, line in imports(f, known) if not top and t != m]
    assert hidden == []


def test_import_graph_has_no_cycle() -> None:
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(v: str, path: list[str]) -> None:
        state[v] = 1
        for w in sorted(g[v]):
            if state.get(w) == 1:
                cycles.append(" -> ".join(path[path.index(w):] + [w]))
            elif w not in state:
                visit(w, path + [w])
        state[v] = 2

    for v in sorted(g):
        if v not in state:
            visit(v, [v])
    assert cycles == []


@pytest.mark.parametrize("module", ["benchmark.cli", "methods.acl", "attacks.pgd"])
def test_layer_examples(module: str) -> None:  # the map itself: a wrong pattern would pass the rest
    assert layer_of(module) == {"benchmark.cli": "cli", "methods.acl": "methods", "attacks.pgd": "blocks"}[module]
