"""The one way tests run the real command line (``python run_search.py ...``) in a subprocess.

Every subprocess gets the same environment: this checkout first on ``PYTHONPATH`` (so a test
of a worktree runs that worktree's code, whatever is installed), no bytecode written into the
repository, and one OpenMP thread unless a test asks for more (the suite runs test files in
parallel on a few cores).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUN_SEARCH = ROOT / "run_search.py"
# How long a test waits for a process before it calls it stuck. Only a hang may fail a test,
# never a slow machine: the longest CLI runs of the suite take 1-3 minutes on 2 idle cores,
# and several times that with the suite's other workers and another job on the same cores.
HANG_SECONDS = 1200


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


def ray_cli_env(ray_tmpdir: str | None = None) -> dict[str, str]:
    """The environment of a CLI run on Ray: no RAY_* from outside (the CLI sets its own
    defaults) and no OMP_NUM_THREADS, so that Ray sets it per trial as it would for a user."""
    env = {k: v for k, v in cli_env(OMP_NUM_THREADS=None).items() if not k.startswith("RAY_")}
    if ray_tmpdir is not None:
        env["RAY_TMPDIR"] = ray_tmpdir
    return env


def cli_command(args: Iterable[Any]) -> list[str]:
    """``python run_search.py ARGS`` as an argv list (arguments turned into strings)."""
    return [sys.executable, str(RUN_SEARCH), *map(str, args)]


def run_cli(
    args: Iterable[Any], cwd: Path | str, timeout: float = HANG_SECONDS, env: dict[str, str] | None = None
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


class CliRunner:
    """CLI processes a test module starts (possibly from a thread pool), each in its own
    session, with stdout and stderr in files (nobody needs to read a pipe while a test polls the
    storage). ``close()`` ends whatever still runs, by process group, when a test fails early."""

    def __init__(self, threads: int = 2, timeout: float = HANG_SECONDS) -> None:
        self.timeout = timeout  # seconds a run may take, unless a call says otherwise
        self._lock = threading.Lock()
        self._procs: list[subprocess.Popen] = []
        self._closed = False
        self._logs = Path(tempfile.mkdtemp(prefix="cli-logs-"))
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cli")

    def start(self, args: Iterable[Any], cwd: Path, log: str | None = None) -> subprocess.Popen:
        """Start the CLI; ``proc.log`` is its (stdout, stderr) files."""
        with self._lock:
            if self._closed:
                raise RuntimeError("runner closed")
            stem = self._logs / f"{log or 'run'}-{len(self._procs)}"
            paths = (stem.with_suffix(".out"), stem.with_suffix(".err"))
            with open(paths[0], "w") as out, open(paths[1], "w") as err:
                proc = start_cli(args, cwd, stdout=out, stderr=err, start_new_session=True)
            proc.log = paths  # type: ignore[attr-defined]
            self._procs.append(proc)
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=60)

    def wait(self, proc: subprocess.Popen, timeout: float | None = None) -> subprocess.CompletedProcess:
        timeout = timeout or self.timeout
        log: tuple[Path, Path] = proc.log  # type: ignore[attr-defined]
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            command = " ".join(map(str, proc.args[2:]))
            raise AssertionError(
                f"{command} did not finish in {timeout}s; stderr:\n{log[1].read_text()[-3000:]}"
            ) from None
        out, err = (path.read_text() for path in log)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def run(
        self, args: Iterable[Any], cwd: Path, log: str | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess:
        return self.wait(self.start(args, cwd, log), timeout)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self.pool.submit(fn, *args)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in self._procs:
            self.kill(proc)
        shutil.rmtree(self._logs, ignore_errors=True)


def background_fixtures(
    jobs: dict[str, Callable[..., Any]], needed_by: set[str], timeout: float = HANG_SECONDS
) -> tuple[Any, Any, Any]:
    """The module fixtures ``runner``, ``background`` and ``_start_background_early`` of a test
    module whose CLI scenarios (``jobs``: name -> ``job(runner, work_dir)``) run in background
    threads, two at a time: they start when the module starts if any selected test of
    ``needed_by`` needs them, so that they overlap with the module's in-process tests.
    Assign the three to the module's names of the same names."""
    import pytest

    @pytest.fixture(scope="module", name="runner")
    def runner_fixture():
        runner = CliRunner(timeout=timeout)
        yield runner
        runner.close()

    @pytest.fixture(scope="module", name="background")
    def background_fixture(runner, tmp_path_factory) -> dict[str, Future]:
        return {name: runner.submit(job, runner, tmp_path_factory.mktemp(name)) for name, job in jobs.items()}

    @pytest.fixture(scope="module", autouse=True, name="_start_background_early")
    def start_early(request) -> None:
        selected = {
            getattr(item, "originalname", item.name) for item in request.session.items if item.module is request.module
        }
        if selected & needed_by:
            request.getfixturevalue("background")

    return runner_fixture, background_fixture, start_early
