"""The house rules on imports, checked on the source (every import, including those inside
functions):

- one way down: ``layers`` < ``models`` < ``spaces`` < ``search``, and inside ``search`` the
  steps of the data flow (objectives < settings < storage < evaluation and reporting < strategies <
  backends and artifacts < commands); nothing imports a step above its own;
- no underscore name is imported across top-level packages (a package that needs another's
  internals gets a public function instead).
"""

from __future__ import annotations

import ast
from pathlib import Path

from _tree import ROOT, project_files

PACKAGES = ("layers", "models", "spaces", "search")
TOP_RANK = {"layers": 0, "models": 1, "spaces": 2, "search": 3}
# search's steps, lowest first; a module may import its own step and those below it
SEARCH_RANK = {
    "objectives": -1,  # the table of objectives, below the settings that read it
    "settings": 0,
    "compat": 0,
    "quiet": 0,
    "files": 0,
    "versions": 0,
    "storage": 1,
    "evaluation": 2,
    "reporting": 2,
    "strategies": 3,
    "errors": 3,
    "backends": 4,
    "artifacts": 4,
    "commands": 5,
}


def _modules() -> list[Path]:
    """The project's modules (git's list: never files of a virtual environment in the checkout)."""
    return project_files(*(f"{package}/*.py" for package in PACKAGES), "bench/*.py", "tools/*.py", "run_search.py")


def _dotted(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolved against the file's package
                package = _dotted(path).split(".")
                if path.name != "__init__.py":
                    package = package[:-1]
                package = package[: len(package) - node.level + 1]
                module = ".".join(package + ([module] if module else []))
            found.append((module, [alias.name for alias in node.names], node.lineno))
    return found


def _step(dotted: str) -> tuple[int, str] | None:
    """(rank, step name) of a module of ours, None for anything else."""
    parts = dotted.split(".")
    if parts[0] not in TOP_RANK:
        return None
    if parts[0] != "search" or len(parts) == 1:
        return (TOP_RANK[parts[0]] * 100, parts[0])
    return (TOP_RANK["search"] * 100 + SEARCH_RANK[parts[1]], f"search.{parts[1]}")


def test_every_search_module_has_a_step() -> None:
    steps = {p.relative_to(ROOT / "search").parts[0].removesuffix(".py") for p in project_files("search/*")}
    steps -= {"__init__"}
    assert steps == set(SEARCH_RANK), "add the new part of search/ to SEARCH_RANK (and docs/architecture.md)"


def test_imports_only_go_down() -> None:
    upward = []
    for path in _modules():
        own = _step(_dotted(path))
        if own is None:  # bench/, tools/ and run_search.py sit on top
            continue
        for module, _, line in _imports(path):
            theirs = _step(module)
            if theirs is None or theirs[1] == own[1]:
                continue
            if theirs[0] >= own[0]:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({own[1]}) imports {module} ({theirs[1]})")
    assert not upward, "\n".join(upward)


def test_no_private_name_crosses_a_top_level_package() -> None:
    crossing = []
    for path in _modules():
        own_top = path.relative_to(ROOT).parts[0]
        for module, names, line in _imports(path):
            top = module.split(".")[0]
            if top not in PACKAGES or top == own_top:
                continue
            private = [n for n in names if n.startswith("_")] + [p for p in module.split(".") if p.startswith("_")]
            if private:
                crossing.append(f"{path.relative_to(ROOT)}:{line} imports {', '.join(private)} from {module}")
    assert not crossing, "\n".join(crossing)
