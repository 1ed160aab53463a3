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
    ("face", {"__main__", "cli", "report.notebook", "report.view", "predict", "export"}),
    ("study", {"study", "plan", "trained"}),
    ("experiment", {"experiment"}),
    ("fit", {"fit.train", "fit.probe", "fit.context"}),
    # views read records (and models): the final stage's choice and interval, tables,
    # conclusions, Russian labels, figures, architecture views, TensorBoard curves
    ("views", {"report.tables", "final", "selection", "report.conclusions", "report.ru",
               "report.log_ru", "report.figures", "report.architecture", "tboard"}),
    ("parts", {"fit.optim", "fit.evaluate", "fit.features"}),
    ("model", {"models", "net", "baseline"}),
    ("data", {"data", "fit.augment", "sources", "folds"}),
    ("records", {"config", "record", "store", "regimes"}),
    ("ground", {"fit.hardware", "files", "fit.kernels", "errors", "util", "fit.dist",
                "durations", "resources", "stats", "fmt", "places", "__init__", "fit", "report"}),
]
SIBLINGS = [{"fit.train", "fit.probe"}]  # same layer, but neither may import the other
FOLDERS = {"fit": "fitting machinery", "report": "presentation"}  # the subpackages


def rank(module: str) -> int:
    for i, (_, names) in enumerate(LAYERS):
        if module in names:
            return len(LAYERS) - i
    raise AssertionError(f"module {module}.py is in no layer of tests/test_layers.py: add it to "
                         "LAYERS (and to the module table of design.md)")


def module_name(path: Path) -> str:
    """'fit.train' for fit/train.py, 'fit' for fit/__init__.py, 'cli' for cli.py."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _resolve(dotted: list[str], names: list[str], known: set[str]) -> set[str]:
    """The package modules `from <dotted> import <names>` reaches."""
    base = ".".join(dotted)
    out = set()
    for n in names:
        full = f"{base}.{n}" if base else n
        out.add(full if full in known else base)
    return {m for m in out if m}


def imports_of(path: Path, known: set[str] | None = None) -> set[str]:
    """Package modules that `path` imports, anywhere in the file (lazy imports included)."""
    known = known if known is not None else {module_name(p) for p in PACKAGE.rglob("*.py")}
    me = module_name(path) if path.is_relative_to(PACKAGE) else path.stem
    package = me.split(".")[:-1] if path.name != "__init__.py" else me.split(".")
    if not path.is_relative_to(PACKAGE):
        package = []
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level:
                up = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                dotted = up + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "transferlab":
                dotted = node.module.split(".")[1:]
            else:
                continue
            out |= _resolve(dotted, names, known) if dotted or names else set()
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "transferlab" and len(parts) > 1:
                    out.add(".".join(parts[1:]))
    return out - {me}


def graph() -> dict[str, set[str]]:
    known = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {module_name(p): imports_of(p, known) for p in sorted(PACKAGE.rglob("*.py"))}


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
    deps = imports_of(f, {module_name(p) for p in PACKAGE.rglob("*.py")})
    assert any(rank(d) > rank("config") for d in deps), (problem, deps)


def test_a_cycle_is_found_and_named():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_config_does_not_import_the_store():
    """Specs and ids are records below the store: config tells a server URL from a file
    through places.py, not by importing the store."""
    assert "store" not in graph()["config"]


def test_no_ticket_numbers_in_the_code_or_the_notebook():
    """Comments and cells say why, not which ticket asked for it."""
    import re
    files = sorted(PACKAGE.rglob("*.py")) + sorted(PACKAGE.rglob("*.ipynb"))
    bad = [f"{p.relative_to(PACKAGE)}: {m.group(0)}" for p in files
           for m in re.finditer(r"\b(issue|ticket)s? *#? *\d+", p.read_text(), re.IGNORECASE)]
    assert not bad, bad


def test_the_folders_show_the_layers():
    """Fitting machinery in fit/, presentation in report/; fit/ imports nothing of report/,
    the study or the face, and nothing at the top imports report/ except the face and the
    study layer's readers."""
    g = graph()
    for folder in FOLDERS:
        assert (PACKAGE / folder / "__init__.py").is_file()
    fit = {m for m in g if m.startswith("fit.")}
    assert {"fit.train", "fit.probe", "fit.evaluate", "fit.features", "fit.optim",
            "fit.hardware", "fit.kernels", "fit.dist"} <= fit
    assert {"report.tables", "report.figures", "report.conclusions", "report.ru",
            "report.notebook", "report.architecture", "report.view"} <= set(g)
    for m in fit:
        bad = {d for d in g[m] if d.startswith("report") or d in ("study", "plan", "experiment",
                                                                   "cli", "final")}
        assert not bad, (m, bad)
