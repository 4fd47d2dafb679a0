"""A study written by a real quick search, read back through a real ``optuna-dashboard`` server.

The search (budget 2, one epoch, digits) writes into a tmp folder; the dashboard serves that
SQLite file on 127.0.0.1 at a free port and is always terminated at the end.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cli_process import run_cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
STUDY = "vgg_hetconv-digits"
HOST = "127.0.0.1"
LAYERS = {f"conv{i:02d}" for i in range(2, 14)}
STARTUP_SECONDS = 300  # for the dashboard to answer: only a hang (it imports optuna, then serves)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def dashboard_command() -> list[str]:
    """The ``optuna-dashboard`` script of this interpreter (not a shim of another one)."""
    beside = Path(sys.executable).parent / "optuna-dashboard"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("optuna-dashboard")
    if found:
        return [found]
    return [sys.executable, "-c", "from optuna_dashboard._cli import main; main()"]


def get_json(port: int, path: str, timeout: float = 120) -> dict:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as response:
        assert response.status == 200
        return json.loads(response.read().decode())


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("dashboard")
    d = work / "results"
    args = [
        "--preset",
        "quick",
        "--epochs",
        "1",
        "--threads",
        "1",
        "--budget",
        "2",
        "--confirm",
        "0",
        "--no-report",
        "--results-dir",
        str(d),
    ]
    proc = run_cli(args, cwd=work)
    assert proc.returncode == 0, f"search failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    assert (d / "studies.db").exists()
    return d


@pytest.fixture(scope="module")
def dashboard(results_dir, tmp_path_factory):
    """(port, process) of a running dashboard; terminated whatever happens."""
    port = free_port()
    log = tmp_path_factory.mktemp("dashboard_log") / "dashboard.log"
    cmd = [
        *dashboard_command(),
        f"sqlite:///{results_dir / 'studies.db'}",
        "--host",
        HOST,
        "--port",
        str(port),
        "--server",
        "wsgiref",
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=results_dir)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if proc.poll() is not None:
                pytest.fail(f"optuna-dashboard exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                get_json(port, "/api/meta", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"optuna-dashboard did not answer /api/meta within {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}"
                    )
                time.sleep(0.3)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def study_detail(dashboard) -> dict:
    port, _ = dashboard
    summaries = get_json(port, "/api/studies")["study_summaries"]
    matching = [s for s in summaries if s["study_name"] == STUDY]
    assert len(matching) == 1, [s["study_name"] for s in summaries]
    summary = matching[0]
    assert summary["directions"] == ["maximize", "minimize"]
    return get_json(port, f"/api/studies/{summary['study_id']}")


def test_meta_answers(dashboard):
    port, proc = dashboard
    meta = get_json(port, "/api/meta")
    assert isinstance(meta, dict)
    assert proc.poll() is None


def test_objective_names(study_detail):
    assert study_detail["name"] == STUDY
    assert study_detail["objective_names"] == ["accuracy", "mflops"]


def test_trials(study_detail):
    trials = study_detail["trials"]
    assert len(trials) == 2
    for trial in trials:
        assert trial["state"] == "Complete"
        assert len(trial["values"]) == 2
        accuracy, mflops = trial["values"]
        assert 0.0 <= accuracy <= 1.0 and mflops > 0
        assert {p["name"] for p in trial["params"]} == LAYERS
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert "architecture" in attrs and "mflops" in attrs, sorted(attrs)
        assert float(attrs["mflops"]) == pytest.approx(mflops)
        assert '"vgg16"' in attrs["architecture"]


def test_study_user_attrs_visible(study_detail):
    keys = {a["key"] for a in study_detail["user_attrs"]}
    assert {"space", "dataset", "objectives", "protocol", "reference_point"} <= keys
