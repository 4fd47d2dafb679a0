"""A wrong ``--address`` (search/backends/ray_cluster.py) through the real command line: one
``error:`` line that names the address and what to check, exit code 2, soon, and nothing
created (no results folder, no study).

The addresses: nothing listening (port 1, as a mistyped port), ``auto`` with RAY_ADDRESS
pointing there, and three servers this test runs on loopback: one that accepts and says
nothing, one that answers as HTTP/1.1 does, and one that greets as HTTP/2 does and then says
nothing (it passes the check before the search, so the driver's own bound on ``ray.init``
ends that run). A real Ray head passes both (tests/test_ray_search.py, two nodes).

Each run costs a process start (~3 s of imports); the last case waits out a bound shortened
to 2 s. The time-outs below only catch a hang: without these checks a run went on for more
than 5 minutes.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest
from cli_process import HANG_SECONDS, cli_env, ray_cli_env, run_cli

SEARCH = ["--preset", "quick", "--epochs", "1", "--budget", "1", "--confirm", "0", "--backend", "ray"]
HANG = HANG_SECONDS  # a run that takes this long is stuck
SETTINGS_FRAME = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # an empty HTTP/2 SETTINGS frame


@contextmanager
def loopback_server(kind: str) -> Iterator[str]:
    """``127.0.0.1:PORT`` of a server that, to each connection, says nothing (``silent``),
    answers as an HTTP/1.1 server (``http``), or sends an HTTP/2 SETTINGS frame and then
    nothing (``http2``)."""
    server = socket.create_server(("127.0.0.1", 0))
    open_connections: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            open_connections.append(connection)
            try:
                if kind == "http":
                    connection.recv(64)
                    connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                elif kind == "http2":
                    connection.sendall(SETTINGS_FRAME)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        for connection in open_connections:
            connection.close()


def check_refused(proc: subprocess.CompletedProcess, address: str, hint: str, results: Path) -> None:
    shown = f"exit {proc.returncode}\nstderr:\n{proc.stderr[-3000:]}\nstdout:\n{proc.stdout[-1000:]}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, shown
    assert len(lines) == 1 and lines[0].startswith("error: --address "), shown
    assert address in lines[0] and hint in lines[0] and "check" in lines[0], shown
    assert not results.exists(), f"{results} was created:\n{shown}"


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("nothing", "nothing listens there"),
        ("silent", "is not a Ray cluster"),
        ("http", "is not a Ray cluster"),
    ],
)
def test_an_address_where_no_ray_answers_is_one_line(tmp_path, kind, hint):
    results = tmp_path / "results"
    with nullcontext("127.0.0.1:1") if kind == "nothing" else loopback_server(kind) as address:
        proc = run_cli([*SEARCH, "--address", address, "--results-dir", results], tmp_path, HANG, ray_cli_env())
    check_refused(proc, address, hint, results)


def test_auto_names_the_address_it_found(tmp_path):
    results = tmp_path / "results"
    env = {**ray_cli_env(), "RAY_ADDRESS": "127.0.0.1:1"}
    proc = run_cli([*SEARCH, "--address", "auto", "--results-dir", results], tmp_path, HANG, env)
    check_refused(proc, "auto (127.0.0.1:1)", "nothing listens there", results)


def test_joining_something_that_only_looks_like_ray_is_bounded(tmp_path):
    """An HTTP/2 server passes the check before the search; ``ray.init`` would then retry for
    minutes. The driver gives up after JOIN_SECONDS (2 s here) with one line, before a study
    or a folder exists, and Ray's own log lines stay out of the terminal."""
    results = tmp_path / "results"
    program = (
        "import sys; import run_search; from search.backends import ray_cluster; "
        "ray_cluster.JOIN_SECONDS = 2.0; sys.exit(run_search.main(sys.argv[1:]))"
    )
    with loopback_server("http2") as address:
        args = [*SEARCH, "--address", address, "--results-dir", str(results)]
        env = {**ray_cli_env(), "PYTHONPATH": cli_env()["PYTHONPATH"]}
        proc = subprocess.run(
            [sys.executable, "-c", program, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG
        )
    check_refused(proc, address, "no Ray cluster took this driver within 2 s", results)
