"""The package's shape: imports only point down the layer table, no import cycles, small files.

Every module under src/softrec is parsed with `ast`; every import counts, including the ones inside
functions (a lazy import is still a dependency). docs/architecture.md explains the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "softrec"

# Bottom to top: a module may import its own layer and the layers below it, never one above.
# Longest prefix wins (`softrec.evaluation.stage` is in `softrec.evaluation`).
LAYERS: list[tuple[str, list[str]]] = [
    ("foundation", ["softrec.errors", "softrec.suggest", "softrec.hardware", "softrec.paths", "softrec.runs",
                    "softrec.methods", "softrec.metrics", "softrec.config"]),
    ("data", ["softrec.data", "softrec"]),  # `softrec` itself re-exports config and the dataset contract
    ("models", ["softrec.models", "softrec.preflight"]),
    ("inference", ["softrec.inference"]),
    ("training", ["softrec.training", "softrec.baselines"]),
    ("evaluation", ["softrec.evaluation"]),
    ("stages", ["softrec.pipeline", "softrec.report", "softrec.export"]),
    ("bench", ["softrec.bench"]),
    ("cli", ["softrec.cli", "softrec.__main__"]),
]

MAX_LINES = 500
# Being split by a parallel change (issue #16); this allow-list goes once that lands.


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """The softrec modules `path` imports anywhere in its body (`from pkg import mod` -> pkg.mod)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known}


def layer_of(module: str) -> int:
    best, layer = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, layer = len(prefix), index
    if layer < 0:
        raise AssertionError(f"{module}: in no layer of tests/test_architecture.py LAYERS; add it")
    return layer


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported(path, known) - {name} for name, path in found.items()}


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(edges.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                bad.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer():
    for module in modules():
        layer_of(module)


def test_imports_only_point_down():
    bad = upward_imports(graph())
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(bad)


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_source_files_stay_small():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            long.append(f"{relative}: {lines} lines")
    assert not long, f"files over {MAX_LINES} lines (split them by concern):\n" + "\n".join(long)


@pytest.mark.parametrize(("edges", "upward", "cyclic"), [
    ({"softrec.config": {"softrec.data.readers"}}, True, False),
    ({"softrec.models.gguf": {"softrec.models.registry"}, "softrec.models.registry": {"softrec.models.gguf"}},
     False, True),
    ({"softrec.cli.train": {"softrec.training.trainer"}}, False, False),
])
def test_the_checks_can_fail(edges, upward, cyclic):
    assert bool(upward_imports(edges)) is upward
    assert bool(cycles(edges)) is cyclic


def test_the_formats_the_schema_accepts_are_the_readers():
    from softrec.config import FORMATS
    from softrec.data.readers import READERS

    assert list(FORMATS) == list(READERS)


def test_the_schedulers_the_schema_accepts_are_the_curriculums():
    from softrec.methods import SCHEDULERS
    from softrec.training.curriculum import SCHEDULES

    assert list(SCHEDULERS) == list(SCHEDULES)


def test_the_groundings_the_schema_accepts_are_the_evaluations():
    from softrec.config import GROUNDINGS
    from softrec.evaluation.evaluate import GROUNDERS

    assert list(GROUNDINGS) == list(GROUNDERS)
