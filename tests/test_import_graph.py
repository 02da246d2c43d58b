"""Imports in `train/` and `export/` only point down the room order, and never in a circle.

Every `import` is read with `ast`, wherever it sits (module top or inside a function: a lazy
import is an arrow too). Pure standard library; runs on the robot install as well.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("edge_runtime", "train", "export")

# Rooms, lowest first. A module may import its own room and any room on a lower floor; rooms on
# the same floor (text and gan) do not import each other. The longest matching prefix wins.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("edge_runtime",),
    ("train.errors",),
    ("train.options",),
    ("train.data",),
    ("train.models", "train.runs", "train.distributed", "train.timing"),
    ("train.checkpoint",),
    ("train.text", "train.gan"),
    ("train.quality", "train.search"),
    ("train.recipe",),
    ("train.cli",),
    ("train.__main__",),
    ("export",),
)
PACKAGE_ROOTS = {"train": 0}
"""Package `__init__` modules (docstrings only), matched exactly so they catch no stray module."""


def _floor_and_room(module: str) -> tuple[int, str]:
    if module in PACKAGE_ROOTS:
        return PACKAGE_ROOTS[module], module
    best: tuple[int, str] | None = None
    for floor, rooms in enumerate(FLOORS):
        for room in rooms:
            if (module == room or module.startswith(room + ".")) and (
                best is None or len(room) > len(best[1])
            ):
                best = (floor, room)
    assert best is not None, f"{module}: in no room; add it to FLOORS"
    return best


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _imports(path: Path, module: str, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported project module, line) for every import statement in `path`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from train import models` imports the module train.models, not just the package.
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for imported in names:
            target = imported
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] in PACKAGES:
                yield target, node.lineno


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {
        module: {target for target, _ in _imports(path, module, known) if target != module}
        for module, path in known.items()
    }


def test_import_graph_has_no_arrow_from_a_lower_room_to_a_higher_one() -> None:
    known = _modules()
    wrong = []
    for module, path in known.items():
        floor, room = _floor_and_room(module)
        for target, line in _imports(path, module, known):
            target_floor, target_room = _floor_and_room(target)
            if target_room == room or target_floor < floor:
                continue
            wrong.append(f"{path.relative_to(REPO)}:{line}: {room} imports {target}")
    assert not wrong, "imports against the room order:\n" + "\n".join(wrong)


def test_import_graph_has_no_circle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (circle := visit(node)):
            pytest.fail("import circle: " + " → ".join(circle))


def test_import_graph_checker_sees_lazy_and_aliased_imports(tmp_path: Path) -> None:
    # The checker must not be blind to the forms this codebase uses, or the two tests above
    # could pass on a tangled tree.
    source = tmp_path / "probe.py"
    source.write_text(
        "from train import models as m\n"
        "def f():\n"
        "    from train.quality import oracle\n"
        "    import export.cli\n",
        encoding="utf-8",
    )
    known = _modules()
    found = {name for name, _ in _imports(source, "train.data.probe", known)}
    assert found == {"train.models", "train.quality.oracle", "export.cli"}
    assert _floor_and_room("train.gan.loop")[1] == "train.gan"
    assert _floor_and_room("train.gan.loop")[0] > _floor_and_room("train.checkpoint")[0]
    assert _floor_and_room("train.text.pretrain")[0] == _floor_and_room("train.gan.trainer")[0]
