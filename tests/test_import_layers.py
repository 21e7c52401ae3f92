"""The layer table of docs/design.md §1 holds for the code: every module of `renegx` is in a row, no import
(at the top of a module or inside a function) reaches a row above the importer's, and no cycle exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "renegx"
ROW = re.compile(r"^\| (?P<layer>[a-z ]+) \| (?P<modules>`[^|]+) \| [^|]+ \|$")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def layer_table() -> list[tuple[str, list[str]]]:
    """(layer, [path prefix, ...]) from the top row down, read from docs/design.md."""
    text = (ROOT / "docs" / "design.md").read_text()
    section = text[text.index("## 1. Layers") : text.index("## 2.")]
    rows = [ROW.match(line) for line in section.splitlines()]
    return [(row["layer"], re.findall(r"`(renegx/[^`]*)`", row["modules"])) for row in rows if row]


def _layer_of(module: str, table) -> tuple[int, int] | None:
    """(row index, length of the matching path): the row naming the module most precisely."""
    path = str(MODULES[module].relative_to(ROOT))
    matches = [
        (len(prefix), index)
        for index, (_, prefixes) in enumerate(table)
        for prefix in prefixes
        if path == prefix or (prefix.endswith("/") and path.startswith(prefix))
    ]
    if not matches:
        return None
    length, index = max(matches)
    return index, length


def _resolve(name: str) -> str:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports_of(module: str) -> set[str]:
    """The renegx modules `module` imports anywhere in its file (`from a import b` counts b if a module)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {_resolve(alias.name) for alias in node.names if alias.name.startswith("renegx")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("renegx"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else _resolve(node.module))
    found.discard(module)
    return found - {""}


def test_the_table_is_read_and_names_real_paths():
    table = layer_table()
    assert [layer for layer, _ in table][:2] == ["wiring", "orchestration"] and table[-1][0] == "ground"
    for layer, prefixes in table:
        for prefix in prefixes:
            assert (ROOT / prefix).exists(), f"{layer}: {prefix} does not exist"


def test_every_module_is_in_a_layer():
    table = layer_table()
    assert not [module for module in MODULES if _layer_of(module, table) is None]


def test_no_import_goes_up():
    table = layer_table()
    upward = []
    for module in MODULES:
        row = _layer_of(module, table)[0]
        for imported in imports_of(module):
            if imported == "renegx" or module.startswith(imported + "."):
                continue  # a package's own __init__ (read when any of its modules is imported)
            target = _layer_of(imported, table)[0]
            if target < row:
                upward.append(f"{module} ({table[row][0]}) imports {imported} ({table[target][0]})")
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = {module: imports_of(module) for module in MODULES}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycle = trail[trail.index(imported) :] + [imported]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported, [*trail, imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_top_level_stays_small():
    """The top of the package holds the math, the ground and the old paths that saved files name."""
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top
