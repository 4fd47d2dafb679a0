"""The one way tests run the real command line (``python run_search.py ...``) in a subprocess.

Every subprocess gets the same environment: this checkout first on ``PYTHONPATH`` (so a test
of a worktree runs that worktree's code, whatever is installed), no bytecode written into the
repository, and one OpenMP thread unless a test asks for more (the suite runs test files in
parallel on a few cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUN_SEARCH = ROOT / "run_search.py"


def cli_env(**overrides: str | None) -> dict[str, str]:
    """The environment of a CLI subprocess; an override of None removes that variable."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def cli_command(args: Iterable[Any]) -> list[str]:
    """``python run_search.py ARGS`` as an argv list (arguments turned into strings)."""
    return [sys.executable, str(RUN_SEARCH), *map(str, args)]


def run_cli(
    args: Iterable[Any], cwd: Path | str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the CLI to the end and capture its output as text."""
    return subprocess.run(
        cli_command(args), cwd=cwd, env=env or cli_env(), capture_output=True, text=True, timeout=timeout
    )


def start_cli(
    args: Iterable[Any], cwd: Path | str, env: dict[str, str] | None = None, **popen: Any
) -> subprocess.Popen:
    """Start the CLI without waiting (output goes where ``popen`` says: pipes, files...)."""
    popen.setdefault("text", True)
    return subprocess.Popen(cli_command(args), cwd=cwd, env=env or cli_env(), **popen)
