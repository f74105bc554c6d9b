"""The package's layers (docs/ARCHITECTURE.md), kept by a test over the import graph.

Every module under ``lilaw_med/`` and ``pipelines/`` (installed as ``lilaw_med.pipelines``) is
parsed with :mod:`ast`; each import it makes, at the top of the file or inside a function, must
come from its own layer or one below, and the imports at the top of the files must form no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# bottom to top; a module may import from its own layer or any layer below
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "core",
        (
            "lilaw_med.utils",
            "lilaw_med.quiet",
            "lilaw_med.allocator",
            "lilaw_med.lean",
            "lilaw_med.weighting",
            "lilaw_med.losses",
            "lilaw_med.networks",
            "lilaw_med.meta_step_defaults",
            "lilaw_med.errors",
            "lilaw_med.rng",
        ),
    ),
    ("data", ("lilaw_med.data",)),
    ("run", ("lilaw_med.run",)),
    ("engine", ("lilaw_med.handlers", "lilaw_med.training", "lilaw_med.audit")),
    ("workflows", ("lilaw_med.workflows",)),
    ("top", ("lilaw_med.cli", "lilaw_med.bundle", "lilaw_med.pipelines", "lilaw_med.__main__", "lilaw_med")),
)

# within the engine layer the audit reads run folders only: it never needs the training engine
FORBIDDEN: dict[str, tuple[str, ...]] = {"lilaw_med.audit": ("lilaw_med.training", "lilaw_med.handlers")}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of a module of the package (the longest matching prefix wins).

    Raises:
        LookupError: when the module belongs to no layer (a new top-level module needs a row).
    """
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if _within(module, prefix) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best < 0:
        raise LookupError(f"{module} belongs to no layer: add it to LAYERS in tests/test_layers.py")
    return best


def _modules() -> dict[str, Path]:
    """Every module of the package by its installed dotted name."""
    found: dict[str, Path] = {}
    for root, package in ((REPO_ROOT / "lilaw_med", "lilaw_med"), (REPO_ROOT / "pipelines", "lilaw_med.pipelines")):
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(module: str, path: Path) -> Iterator[tuple[str, int, bool]]:
    """The package modules one file imports: (module, line, whether at the top of the file).

    ``from package import name`` counts as an import of ``package.name`` when that is a module.
    Imports under ``if TYPE_CHECKING:`` count for the layers but not as top-level (they never run).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST, top: bool) -> Iterator[tuple[str, int, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if _within(alias.name, "lilaw_med"):
                        yield alias.name, child.lineno, top
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(module, is_package, child)
                if not _within(target, "lilaw_med"):
                    continue
                subs = [f"{target}.{a.name}" for a in child.names if f"{target}.{a.name}" in MODULES]
                yield from ((name, child.lineno, top) for name in subs or [target])
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from visit(child, False)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from visit(child, False)
            else:
                yield from visit(child, top)

    yield from visit(tree, True)


def test_every_module_has_a_layer() -> None:
    assert "lilaw_med.run.summary" in MODULES  # the walk finds the package
    unplaced = []
    for module in MODULES:
        try:
            layer_of(module)
        except LookupError as err:
            unplaced.append(str(err))
    assert not unplaced, "\n".join(unplaced)


def test_no_module_imports_from_a_higher_layer() -> None:
    wrong = []
    for module, path in MODULES.items():
        own = layer_of(module)
        for target, line, _ in imports(module, path):
            if layer_of(target) > own:
                wrong.append(
                    f"{path.relative_to(REPO_ROOT)}:{line}: {module} ({LAYERS[own][0]}) imports {target} "
                    f"({LAYERS[layer_of(target)][0]})"
                )
            for prefix, banned in FORBIDDEN.items():
                if _within(module, prefix) and any(_within(target, b) for b in banned):
                    wrong.append(f"{path.relative_to(REPO_ROOT)}:{line}: {module} imports {target}")
    assert not wrong, "imports up the layers:\n" + "\n".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of a directed graph as a list of nodes (first == last), or ``None``."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := walk(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := walk(node)) is not None:
            return found
    return None


def test_imports_inside_functions_and_relative_imports_are_seen(tmp_path: Path) -> None:
    path = tmp_path / "mod.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import readers\n"
        "if TYPE_CHECKING:\n"
        "    from lilaw_med.run.config import Config\n"
        "def f():\n"
        "    from lilaw_med.cli import main\n"
    )
    found = list(imports("lilaw_med.data.example", path))
    assert found == [("lilaw_med.data.readers", 2, True), ("lilaw_med.run.config", 4, False), ("lilaw_med.cli", 6, False)]
    assert [layer_of(m) > layer_of("lilaw_med.data.example") for m, _, _ in found] == [False, True, True]


def test_find_cycle_names_the_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_top_level_imports_form_no_cycle() -> None:
    graph = {
        module: {target for target, _, top in imports(module, path) if top and target != module}
        for module, path in MODULES.items()
    }
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle among top-level imports: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("module", "layer"),
    [("lilaw_med.weighting", "core"), ("lilaw_med.data.readers.dicom", "data"), ("lilaw_med.cli.train", "top")],
)
def test_layer_of_known_modules(module: str, layer: str) -> None:
    assert LAYERS[layer_of(module)][0] == layer


THIRD_PARTY_FORBIDDEN: dict[str, tuple[str, ...]] = {"lilaw_med.run": ("ignite", "monai.engines", "monai.handlers")}
"""What a run folder is must read without the training engine: the run layer never imports ignite."""


def _third_party_imports(path: Path) -> Iterator[tuple[str, int]]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node.lineno


def test_the_run_layer_imports_no_training_engine() -> None:
    wrong = [
        f"{path.relative_to(REPO_ROOT)}:{line}: {module} imports {name}"
        for module, path in MODULES.items()
        for prefix, banned in THIRD_PARTY_FORBIDDEN.items() if _within(module, prefix)
        for name, line in _third_party_imports(path) if any(_within(name, b) for b in banned)
    ]
    assert not wrong, "\n".join(wrong)
