"""A real, private PostgreSQL server for the storage tests (imported by test_postgres.py).

The session fixture :func:`postgres_url` runs ``initdb`` in a fresh folder under the system
temp dir, starts the server on a free local port (TCP on 127.0.0.1, its Unix socket in the
same folder, so it never touches a system cluster), creates the database ``nas`` and yields
``postgresql://postgres@127.0.0.1:PORT/nas``. Teardown always stops the server
(``pg_ctl stop -m fast``) and removes the folder.

``initdb`` and ``postgres`` refuse to run as root; as root the server runs as the
``postgres`` user when it exists (Debian's package creates it), else as ``nobody``, through
``subprocess``'s ``user=``/``group=`` (no sudo, su or runuser needed), in a folder owned by
that user.

Without the server binaries the tests are skipped, except under ``CI=true`` (CI installs
``postgresql``), where that is a failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["create_database", "find_server_binaries", "postgres_url"]

DATABASE = "nas"
START_TIMEOUT = 600  # seconds, only a hang: a loaded 2-core machine can be slow to run initdb and start


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path)) or (0,)


def find_server_binaries() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres (Debian layout first, then PATH)."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if all(os.access(os.path.join(folder, name), os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    found = [shutil.which(name) for name in ("initdb", "pg_ctl", "postgres")]
    if all(found) and len({os.path.dirname(p) for p in found}) == 1:  # type: ignore[arg-type]
        return Path(found[0]).parent  # type: ignore[arg-type]
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: CI installs postgresql, so this is an error)", pytrace=False)
    pytest.skip(reason)


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as when we are root, else None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    _skip_or_fail("running as root and neither a 'postgres' nor a 'nobody' account exists for initdb")
    return None  # unreachable


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Server:
    def __init__(self, bindir: Path, user: pwd.struct_passwd | None) -> None:
        self.bindir = bindir
        self.user = user
        # Not pytest's tmp_path: its parents are root-only (0700), the server user could not enter.
        self.root = Path(tempfile.mkdtemp(prefix="nas-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port: int | None = None
        if user is not None:
            os.chown(self.root, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o700)

    def _run(self, args: list[str], timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess:
        kwargs: dict = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = env["LANG"] = "C"
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
            env["HOME"] = str(self.root)
            env["USER"] = env["LOGNAME"] = self.user.pw_name
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no server log)"

    def initdb(self) -> None:
        proc = self._run(["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")

    def start(self) -> None:
        last = ""
        for _ in range(3):  # the free port can be taken between choosing and binding it
            self.port = _free_port()
            options = (
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            proc = self._run(
                [
                    "pg_ctl",
                    "-D",
                    str(self.data),
                    "-o",
                    options,
                    "-l",
                    str(self.log),
                    "-w",
                    "-t",
                    str(START_TIMEOUT),
                    "start",
                ]
            )
            if proc.returncode == 0:
                return
            last = f"pg_ctl start failed ({proc.returncode}): {proc.stderr.strip()}\nserver log:\n{self.log_tail()}"
            self.stop()
        raise RuntimeError(last)

    def create_database(self) -> None:
        import psycopg2

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                connection = psycopg2.connect(
                    host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", connect_timeout=10
                )
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            connection.close()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        pid = self._postmaster_pid()
        try:
            self._run(["pg_ctl", "-D", str(self.data), "stop", "-m", "fast", "-w", "-t", "60"], timeout=90)
        except subprocess.TimeoutExpired:
            pass
        if pid is not None and (self.data / "postmaster.pid").exists():
            # Our own server did not stop: end it (by its pid, the one this fixture started).
            try:
                os.kill(pid, signal.SIGQUIT)
            except ProcessLookupError:
                pass

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def create_database(url: str, name: str) -> str:
    """Create database ``name`` on the server of ``url`` (a URL :func:`postgres_url` yielded);
    returns the same URL pointing at the new database."""
    import psycopg2
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    connection = psycopg2.connect(
        host=parsed.host, port=parsed.port, user=parsed.username, dbname="postgres", connect_timeout=10
    )
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()
    return parsed.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a database ``nas`` on a private PostgreSQL server for this test session."""
    bindir = find_server_binaries()
    if bindir is None:
        _skip_or_fail("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; apt-get install postgresql")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _skip_or_fail("psycopg2 is not installed (pip install psycopg2-binary)")
    server = _Server(bindir, _server_user())  # type: ignore[arg-type]
    try:
        server.initdb()
        server.start()
        server.create_database()
        yield server.url
    finally:
        server.stop()
        server.remove()
