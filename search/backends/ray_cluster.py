"""Reaching the Ray cluster that ``--address`` names, fast or with one line that says why not.

``ray.init(address=...)`` on an address where nothing listens, or where something other than
Ray does, retries for many minutes and prints Ray's own log lines while it does (its C++
client cannot be interrupted). So the tool does two things itself:

- :func:`check_ray_address`, called by ``search.commands.check_search`` before a study, a
  folder or a file is created: the host must resolve, something must accept a connection at
  the port, and it must answer an HTTP/2 greeting as a gRPC server does (Ray's head, the GCS,
  and Ray Client's server are gRPC servers). Each step is bounded by ``PROBE_SECONDS``.
- :func:`join_ray_cluster`, what the Ray driver calls instead of a bare ``ray.init``: the
  connection runs in a daemon thread with Ray's output set aside, for at most
  ``JOIN_SECONDS``, and a failure is one line. The driver joins before it opens the study, so
  a cluster that will not take the driver leaves nothing behind either.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from search.errors import UserError

__all__ = ["JOIN_SECONDS", "PROBE_SECONDS", "check_ray_address", "join_ray_cluster"]

PROBE_SECONDS = 10.0  # per step (connect, answer); a Ray head answers in milliseconds
JOIN_SECONDS = 30.0  # ray.init against a Ray head takes a second or two, even on a busy machine
# An HTTP/2 client's greeting: the connection preface and an empty SETTINGS frame. A gRPC
# server answers with a SETTINGS frame of its own (frame type 4, the 4th of its 9 header bytes).
_HTTP2_GREETING = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS_FRAME = 4
_CHECK = "check that the Ray head node is up (`ray start --head --port=6379` there) and that this is its address (`ray status` on it prints it)"


def _host_port(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``ray://HOST:PORT`` (the form search.settings checked), IPv6 in brackets."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return host.strip("[]"), int(port)


def _found_address(address: str) -> str:
    """``auto``: the cluster Ray itself would join (RAY_ADDRESS, or the address ``ray start``
    left on this machine); any other address as it is."""
    if address != "auto":
        return address
    from search.compat import ray_auto_address

    try:
        return ray_auto_address()
    except ConnectionError:
        raise UserError(
            "--address auto finds no running Ray cluster (RAY_ADDRESS is not set and no `ray start` on this "
            "machine left its address); start one (`ray start --head`) or give the head's --address HOST:6379"
        ) from None


def check_ray_address(address: str) -> None:
    """Raise UserError unless a gRPC server (a Ray head) answers at ``address`` (``auto``: the
    cluster Ray would find). Takes at most 2 x ``PROBE_SECONDS``; imports Ray only for ``auto``."""
    found = _found_address(address)
    if found == "local":  # RAY_ADDRESS=local: Ray starts a private one
        return
    named = address if found == address else f"{address} ({found})"
    host, port = _host_port(found)
    try:
        connection = socket.create_connection((host, port), timeout=PROBE_SECONDS)
    except socket.gaierror as err:
        raise UserError(f"--address {named}: host {host!r} is not known ({err.strerror}); check the name") from None
    except ConnectionRefusedError:
        raise UserError(f"--address {named}: nothing listens there (connection refused); {_CHECK}") from None
    except TimeoutError:
        raise UserError(
            f"--address {named}: no answer within {PROBE_SECONDS:.0f} s (a wrong host, or a firewall); {_CHECK}, "
            f"and that port {port} is open to this machine"
        ) from None
    except OSError as err:
        raise UserError(f"--address {named}: cannot connect ({err.strerror or err}); {_CHECK}") from None
    with connection:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return  # a TLS cluster answers a TLS greeting only: the connection is what can be checked
        try:
            connection.settimeout(PROBE_SECONDS)
            connection.sendall(_HTTP2_GREETING)
            answer = connection.recv(9)
        except OSError:  # a time-out included
            answer = b""
    if len(answer) < 4 or answer[3] != _SETTINGS_FRAME:
        raise UserError(
            f"--address {named} accepts connections but is not a Ray cluster (no gRPC answer); check the port: "
            "a Ray head listens on 6379 unless `ray start --port` chose another"
        )


@contextmanager
def _ray_output_aside() -> Iterator[dict[str, bool]]:
    """File descriptor 2 on a throw-away file while Ray connects: its C++ client writes its
    retries there, not Python's sys.stderr. ``state["abandoned"] = True`` (a connection still
    retrying in its thread) leaves descriptor 2 there for good and gives sys.stderr a copy of
    the real one, so that the one line of the error reaches the terminal and Ray's do not."""
    sys.stderr.flush()
    real = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        state = {"abandoned": False}
        try:
            yield state
        finally:
            if state["abandoned"]:
                encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
                sys.stderr = os.fdopen(real, "w", encoding=encoding, errors="backslashreplace", buffering=1)
            else:
                os.dup2(real, 2)
                os.close(real)


def join_ray_cluster(address: str, **init_options: Any) -> None:
    """``ray.init(address=address, **init_options)`` within ``JOIN_SECONDS``, or UserError.

    A connection that has not finished by then cannot be stopped: its thread (a daemon) is
    left behind, and the error says the process must end at once (``UserError.ends_process``):
    finalizing Python under that thread aborted the process on a busy machine (exit -6)."""
    import ray

    failure: list[BaseException] = []

    def connect() -> None:
        try:
            ray.init(address=address, **init_options)
        except BaseException as err:  # handed to the calling thread
            failure.append(err)

    with _ray_output_aside() as state:
        thread = threading.Thread(target=connect, name="ray-connect", daemon=True)
        thread.start()
        thread.join(JOIN_SECONDS)
        still_connecting = state["abandoned"] = thread.is_alive()  # one answer for both uses
    check = f"check that it is the Ray head node's address and that the cluster runs Ray {ray.__version__} as this machine does"
    if still_connecting:
        error = UserError(f"--address {address}: no Ray cluster took this driver within {JOIN_SECONDS:.0f} s; {check}")
        error.ends_process = True  # the abandoned connection thread: see UserError
        raise error
    if failure:
        reason = (str(failure[0]).strip().splitlines() or [type(failure[0]).__name__])[0]
        raise UserError(f"--address {address}: cannot join the Ray cluster there ({reason[:300]}); {check}")
