"""The project's own files, as a clone has them: what the tests that walk the tree read.

A checkout also holds what git ignores: a virtual environment inside it (``.venv/``, as
``.ci/run`` and many users make one), build outputs, ``results/``, data sets. A house-rule
test must read none of those: a virtual environment holds thousands of other projects'
``.py`` files, some not even UTF-8. So the tree is what ``git ls-files`` lists (tracked
files and new ones git does not ignore); outside a git checkout (an unpacked archive) it is
a walk that skips hidden folders, virtual environments and the folders ``.gitignore`` names.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Without git: the folders .gitignore names (besides hidden ones, caches and virtual environments).
_IGNORED = {"build", "dist", "results", "data", "tests/artifacts"}


def _git_files(root: Path) -> list[Path] | None:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            timeout=120,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    names = [name for name in listed.decode("utf-8", "surrogateescape").split("\0") if name]
    return [root / name for name in names if (root / name).is_file()]  # a deleted tracked file is gone


def _walked_files(root: Path) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [
            d
            for d in dirs
            if not d.startswith(".")
            and d != "__pycache__"
            and not d.endswith(".egg-info")
            and (Path(folder) / d).relative_to(root).as_posix() not in _IGNORED
            and not (Path(folder) / d / "pyvenv.cfg").exists()
        ]
        found += [Path(folder) / name for name in files]
    return found


def project_files(*patterns: str, root: Path = ROOT) -> list[Path]:
    """The project's files whose path relative to ``root`` matches one of ``patterns``
    (``fnmatch``, where ``*`` also crosses ``/``; none: every file), sorted."""
    files = _git_files(root)
    if files is None:
        files = _walked_files(root)
    chosen = [
        p
        for p in files
        if not patterns or any(fnmatch.fnmatch(p.relative_to(root).as_posix(), pattern) for pattern in patterns)
    ]
    return sorted(chosen)
