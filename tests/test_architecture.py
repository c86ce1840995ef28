"""The package's imports run one way: from the CLI down to ``core``, with no cycles, counting imports inside
functions. A change that adds an upward or circular import fails here, not in the next maintainer's head."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cryonuseg_hf"
LAYERS = ("core", "data", "evaluation", "model", "training", "reports", "apps", "cli")
"""Lowest first: a module may import from its own layer and the layers before it, never from one after it."""
SELF_CONTAINED = "evaluation.nuclei_instance_metric"
"""The ``evaluate`` module is pushed to the Hub alone: it imports nothing from the package."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "(package)"


def internal_imports(path: Path) -> set[str]:
    """Every ``cryonuseg_hf`` module ``path`` imports, at the top or inside a function, as module names."""
    found = set()
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:  # relative: only inside the evaluate module
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            names = [".".join(["cryonuseg_hf", *base, *([node.module] if node.module else [])])]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "cryonuseg_hf" or name.startswith("cryonuseg_hf."):
                found.add(name.removeprefix("cryonuseg_hf").lstrip(".") or "(package)")
    modules = set(GRAPH_MODULES)
    # `from cryonuseg_hf.data import masks` names a module; `from cryonuseg_hf.data.masks import x` names a function
    return {name if name in modules else name.rsplit(".", 1)[0] for name in found} - {module_name(path)}


GRAPH_MODULES = [module_name(p) for p in sorted(PACKAGE.rglob("*.py"))]
GRAPH = {module_name(p): internal_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int | None:
    top = module.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else None


def test_every_module_belongs_to_a_layer():
    loose = [m for m in GRAPH if layer(m) is None and m not in ("(package)", "__main__")]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


def test_imports_only_run_down_the_layers():
    upward = [
        f"{m} -> {d}"
        for m, deps in GRAPH.items()
        for d in deps
        if layer(m) is not None and layer(d) is not None and layer(d) > layer(m)
    ]
    assert not upward, "imports from a higher layer:\n  " + "\n  ".join(sorted(upward))


def test_no_import_cycles():
    cycles, state = [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(GRAPH.get(module, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)


def test_only_the_package_root_and_the_cli_reach_into_the_package_root():
    # paths and the fold protocol live in `core`; the package root only re-exports them for users
    users = sorted(m for m, deps in GRAPH.items() if "(package)" in deps)
    assert users == [], f"modules importing from the package root instead of its home: {users}"


def test_the_evaluate_module_imports_nothing_from_the_package():
    inside = {m: d for m, d in GRAPH.items() if m.startswith(SELF_CONTAINED)}
    assert inside, SELF_CONTAINED
    leaks = {m: sorted(d for d in deps if not d.startswith(SELF_CONTAINED)) for m, deps in inside.items()}
    assert not any(leaks.values()), leaks


@pytest.mark.parametrize("bad", ["from cryonuseg_hf.cli import main", "import cryonuseg_hf.apps.app"])
def test_the_checks_catch_an_upward_import(tmp_path, bad):
    module = tmp_path / "cryonuseg_hf" / "data" / "sneaky.py"
    module.parent.mkdir(parents=True)
    module.write_text(f"def f():\n    {bad}\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "cryonuseg_hf"
    try:
        deps = internal_imports(module)
    finally:
        PACKAGE = saved
    assert any(layer(d) > layer("data.sneaky") for d in deps), deps


def public_definitions(path: Path) -> set[str]:
    """Names of the public functions and classes a module defines at its top level."""
    tree = ast.parse(path.read_text(), str(path))
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and not node.name.startswith("_")
    }


def repeated_public_names(package: Path) -> dict[str, list[str]]:
    """Public names defined in more than one module of ``package``: one job with two homes.

    The ``evaluate`` module's folder is left out: it is pushed to the Hub alone, so its own entry points
    (``app.py``) may repeat what the package names elsewhere.
    """
    homes: dict[str, list[str]] = {}
    for path in sorted(package.rglob("*.py")):
        if SELF_CONTAINED.replace(".", "/") in path.as_posix():
            continue
        for name in public_definitions(path):
            homes.setdefault(name, []).append(str(path.relative_to(package)))
    return {name: where for name, where in homes.items() if len(where) > 1}


SUBCOMMAND_ENTRIES = {"add_parsers"}
"""The CLI's group modules each define ``add_parsers``: one convention, not one job twice."""


def test_every_public_function_has_one_home():
    repeated = {k: v for k, v in repeated_public_names(PACKAGE).items() if k not in SUBCOMMAND_ENTRIES}
    assert not repeated, "public names defined in several modules:\n  " + "\n  ".join(
        f"{name}: {', '.join(where)}" for name, where in sorted(repeated.items())
    )


def test_the_one_home_check_catches_a_second_definition(tmp_path):
    for module in ("a", "b"):
        (tmp_path / f"{module}.py").write_text(
            "def score_predictions():\n    pass\n\ndef _private():\n    pass\n"
        )
    assert repeated_public_names(tmp_path) == {"score_predictions": ["a.py", "b.py"]}
