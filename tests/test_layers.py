"""The layering of docs/architecture.md, read off the import graph: nothing imports upward.

Every `import workbench.X` / `from workbench.X import ...` in the package (function-level imports
included) is checked against the layer order below. A capability may import the engines and the
core foundation (`workbench.core`) and other capabilities, but never a dataset, a model,
an experiment, a figure, a panel or the paper runner.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"

# (layer name, top-level modules), in import order: a module imports only from its own layer or
# the ones before it.
LAYERS = [
    ("core foundation", {"core"}),
    ("data and models", {"data", "models", "gpt"}),
    ("engines", {"curvature", "train"}),
    ("capabilities", {"spectrum", "sketch", "influence", "schedules", "convex", "icl",
                      "unlearning", "distributed", "continual", "transport", "mixing"}),
    ("experiments", {"experiments"}),
    ("presentation", {"plots", "ui"}),
    ("running", {"run", "__main__"}),
]
RANK = {mod: i for i, (_, mods) in enumerate(LAYERS) for mod in mods}
# Beyond the order: engines and capabilities take pure functions and pytrees, never a dataset
# loader or a model class. They may name the two boundary types (the Dataset container and the
# Functional form of a model) in annotations and isinstance checks.
FORBIDDEN = {
    "engines": {"data", "models", "gpt"},
    "capabilities": {"data", "models", "gpt"},
}
BOUNDARY_TYPES = {"data": {"Dataset"}, "models": {"Functional"}}


def top_module(path: Path, package: Path) -> str:
    return path.relative_to(package).with_suffix("").parts[0]


def imported_modules(path: Path, package: Path) -> list[tuple[int, str, set]]:
    """(line, top-level workbench module, names taken from it) for every import of the package
    in `path` (names is empty for a plain `import workbench.X`)."""
    tree = ast.parse(path.read_text())
    package_parts = path.relative_to(package.parent).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(tree):
        taken = set()
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = list(package_parts[: len(package_parts) - node.level + 1])
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            taken = {a.name for a in node.names}
            if mod == "workbench":  # from workbench import X, Y
                names, taken = [f"workbench.{a.name}" for a in node.names], set()
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "workbench" and len(parts) > 1:
                found.append((node.lineno, parts[1], taken if len(parts) == 2 else set()))
    return found


def violations(package: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "__init__.py":
            continue  # the package root re-exports record/save_figure for notebooks
        own = top_module(path, package)
        if own not in RANK:
            bad.append(f"{path.relative_to(package)}: module '{own}' is in no layer of tests/test_layers.py")
            continue
        layer = LAYERS[RANK[own]][0]
        for line, target, taken in imported_modules(path, package):
            if target == own or target not in RANK:
                continue
            if RANK[target] > RANK[own]:
                bad.append(f"{path.relative_to(package)}:{line} ({layer}) imports '{target}' "
                           f"({LAYERS[RANK[target]][0]}): an upward import")
            elif target in FORBIDDEN.get(layer, ()) and not (taken and taken <= BOUNDARY_TYPES[target]):
                bad.append(f"{path.relative_to(package)}:{line} ({layer}) imports '{target}': "
                           f"{layer} take pure functions and pytrees, not datasets or models")
    return bad


def test_every_module_has_a_layer_and_nothing_imports_upward():
    assert violations() == []


def test_the_check_sees_an_upward_import(tmp_path):
    """A capability that imports an experiment, a function-level import included, is caught."""
    fake = tmp_path / "workbench"
    (fake / "spectrum").mkdir(parents=True)
    (fake / "experiments").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "experiments" / "__init__.py").write_text("")
    (fake / "spectrum" / "__init__.py").write_text(
        "def f():\n    from workbench.experiments import digits\n    return digits\n")
    (fake / "spectrum" / "ok.py").write_text("from workbench.core import tree\nfrom workbench import curvature\n")
    (fake / "spectrum" / "models_user.py").write_text(
        "from . import helper\nimport workbench.models\nfrom workbench.data import Dataset\n"
        "from workbench.data import load_digits\n")
    found = violations(fake)
    assert any("spectrum/__init__.py:2" in v and "upward" in v for v in found), found
    assert any("models_user.py:2" in v and "'models'" in v for v in found), found
    assert any("models_user.py:4" in v and "'data'" in v for v in found), found  # a loader
    assert not any("models_user.py:3" in v for v in found), found  # the Dataset type is fine
    assert not any("ok.py" in v for v in found), found


@pytest.mark.parametrize("module", sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()))
def test_every_package_explains_itself(module):
    """Each folder of the package opens with a docstring saying what it is for."""
    doc = ast.get_docstring(ast.parse((PACKAGE / module / "__init__.py").read_text()))
    assert doc and len(doc) > 40, f"workbench/{module}/__init__.py needs a docstring"
