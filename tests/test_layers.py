"""The import graph of src/transferlab: no cycle, and no import that runs up the layers.

Every module's imports are read with `ast` (imports inside functions, the lazy ones, count
too). Layers, top to bottom, as in shared/design.md (regimes.py is a leaf declaration table
that config validates against, so it sits with the records; views read records and models):
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "transferlab"

LAYERS = [  # top first; a module may import from its own layer or any layer below
    ("face", {"__main__", "cli", "notebook", "predict", "export"}),
    ("study", {"study", "plan", "trained"}),
    ("experiment", {"experiment"}),
    ("fit", {"train", "probe"}),
    # views read records (and models): the final stage's choice and interval, tables,
    # conclusions, Russian labels, figures, architecture views, TensorBoard curves
    ("views", {"report", "final", "selection", "conclusions", "ru", "figures", "architecture",
               "tboard"}),
    ("parts", {"optim", "evaluate", "features"}),
    ("model", {"models", "net", "baseline"}),
    ("data", {"data", "augment", "sources", "folds"}),
    ("records", {"config", "record", "store", "regimes"}),
    ("ground", {"hardware", "files", "kernels", "errors", "util", "dist", "durations",
                "resources", "stats", "__init__"}),
]
SIBLINGS = [{"train", "probe"}]  # same layer, but neither may import the other


def rank(module: str) -> int:
    for i, (_, names) in enumerate(LAYERS):
        if module in names:
            return len(LAYERS) - i
    raise AssertionError(f"module {module}.py is in no layer of tests/test_layers.py: add it to "
                         "LAYERS (and to the module table of design.md)")


def imports_of(path: Path) -> set[str]:
    """Package modules that `path` imports, anywhere in the file (lazy imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                out.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x, y
                out.update(a.name for a in node.names)
            elif node.module and node.module.split(".")[0] == "transferlab":
                parts = node.module.split(".")
                out.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "transferlab" and len(parts) > 1:
                    out.add(parts[1])
    return out - {path.stem}


def graph() -> dict[str, set[str]]:
    return {p.stem: imports_of(p) for p in sorted(PACKAGE.glob("*.py"))}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_every_module_has_a_layer():
    for module in graph():
        rank(module)


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(f"{m}.py" for m in cycle)


def test_no_upward_import():
    bad = [f"{m}.py ({LAYERS[len(LAYERS) - rank(m)][0]}) imports {d}.py "
           f"({LAYERS[len(LAYERS) - rank(d)][0]}), a higher layer"
           for m, deps in graph().items() for d in sorted(deps) if rank(d) > rank(m)]
    assert not bad, "imports that run up the layers:\n  " + "\n  ".join(bad)


def test_siblings_do_not_import_each_other():
    g = graph()
    bad = [f"{a}.py imports {b}.py" for pair in SIBLINGS for a in pair for b in pair
           if a != b and b in g.get(a, ())]
    assert not bad, "siblings must not import each other: " + "; ".join(bad)


@pytest.mark.parametrize("source, problem", [
    ("def f():\n    from .cli import main\n", "upward"),
    ("import transferlab.study\n", "upward"),
])
def test_the_checks_see_lazy_and_absolute_imports(tmp_path, source, problem):
    f = tmp_path / "config.py"
    f.write_text(source)
    deps = imports_of(f)
    assert any(rank(d) > rank("config") for d in deps), (problem, deps)


def test_a_cycle_is_found_and_named():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
