"""The house keeps its shape (issue 17): measured from the imports, as a reviewer would. No import cycle,
at most MAX_FLOORS floors of modules importing modules, no module over MAX_LINES lines, no reference to a
design document outside the repository, and docs/architecture.md names exactly the packages that exist.
The layers themselves are import-linter's contract (.importlinter, run by scripts/test.sh)."""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

from tests.support.daemon import ROOT

EDGE = ROOT / "edge"
MAX_FLOORS = 12          # the longest chain of edge modules importing edge modules (typing-only imports aside)
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(EDGE.rglob("*.py"))}


def _typing_only(tree: ast.Module) -> set[int]:
    nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            nodes.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return nodes


def _known(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """The edge modules `module` imports at run time (module level or inside functions)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _typing_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(known for name in names if name.split(".")[0] == "edge" and (known := _known(name)))
    found.discard(module)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


@functools.cache
def _chain(module: str, visiting: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The longest chain of imports from `module` down; raises on a cycle."""
    if module in visiting:
        raise RecursionError(f"import cycle through {module}")
    below = [_chain(dep, visiting | {module}) for dep in sorted(GRAPH[module])]
    return (module, *max(below, key=len, default=()))


def test_no_import_cycle_and_few_floors() -> None:
    longest = max((_chain(module) for module in MODULES), key=len)
    assert len(longest) <= MAX_FLOORS, f"{len(longest)} import floors: {' -> '.join(longest)}"


def test_no_module_is_long() -> None:
    long = {module: n for module, path in MODULES.items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_code_cites_only_documents_in_the_repository() -> None:
    cited = [f"{path.relative_to(ROOT)}:{number}" for path in MODULES.values()
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
             if re.search(r"\bDESIGN\b", line)]
    assert not cited, f"cites a document outside the repository: {cited}"
    for path in MODULES.values():
        for doc in re.findall(r"\bdocs/[\w-]+\.md\b", path.read_text(encoding="utf-8")):
            assert (ROOT / doc).is_file(), f"{path.relative_to(ROOT)} cites {doc}, which does not exist"


def test_the_architecture_page_names_every_package_and_module() -> None:
    """The layer table of docs/architecture.md cannot drift from the tree: each package has its row (the ground
    row holds the top-level modules and edge.config) and names each of its modules."""
    page = (ROOT / "docs/architecture.md").read_text(encoding="utf-8")
    rows = {cell.strip(): text for cell, text in re.findall(r"^\| \d+ \| (.+?) \| (.+) \|$", page, re.M)}
    assert rows, "docs/architecture.md has no layer table"
    owner = {name.strip("` "): text for cell, text in rows.items() for name in cell.split("·")}
    missing = []
    for module, path in MODULES.items():
        parts = module.split(".")
        if parts[-1] == "__main__" or module == "edge":
            continue
        top_level = len(parts) == 2 and path.name != "__init__.py"
        where = "ground" if top_level or parts[1] == "config" else f"edge.{parts[1]}"
        row = owner.get(where)
        if row is None:
            missing.append(f"{module}: the table has no row for {where}")
        elif path.name != "__init__.py" and f"`{parts[-1]}`" not in row:
            missing.append(f"{module}: not named in the row of {where}")
    assert not missing, "\n".join(missing)
