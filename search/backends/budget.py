"""Exactly ``budget`` finished trials, with any number of workers on one study.

Several workers (processes on one machine, or machines sharing a PostgreSQL storage) must
not overshoot the budget: each worker takes a *slot* (asks for a trial) only while holding a
lock that covers "count finished + running trials, then ask". SQLite storages lock a file
beside the database (workers on one machine); PostgreSQL storages take an advisory lock in
the database (workers on many machines). Other storages fall back to no lock, which can
overshoot by at most the number of workers minus one (docs/cluster.md says so).

A worker also keeps a heartbeat for its running trial, so a trial whose process was killed
is found stale by the next worker (``optuna.storages.fail_stale_trials``), failed, and its
configuration queued again once (``RetryHeartbeatStaleTrialCallback``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path

import optuna

from search.backends.study import spent_in
from search.compat import (
    fail_as_stale,
    grace_period,
    heartbeat_interval,
    record_heartbeat,
    running_without_heartbeat,
    study_storage,
    trial_id,
)
from search.storage import StorageError, is_repeat, trial_index

__all__ = ["Heartbeat", "budget_lock", "fail_stale", "first_heartbeat", "take_slot"]


@contextlib.contextmanager
def budget_lock(storage_url: str, study_name: str) -> Iterator[None]:
    """A lock shared by every worker of ``study_name`` on this storage."""
    if storage_url.startswith("sqlite:///") and not storage_url.endswith(":memory:"):
        path = Path(storage_url[len("sqlite:///") :]).with_suffix(f".{_slug(study_name)}.lock")
        try:
            handle = open(path, "a+")  # noqa: SIM115  (closed by the with below)
        except OSError as err:
            raise StorageError(
                f"cannot open the budget lock {path} beside the storage ({err.strerror}); "
                "the storage's folder must be writable"
            ) from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    elif storage_url.startswith(("postgresql", "postgres")):
        import sqlalchemy

        key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
        engine = _engine(storage_url)
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
    else:
        yield


_ENGINES: dict[str, object] = {}


def _engine(url: str):
    import sqlalchemy

    if url not in _ENGINES:
        _ENGINES[url] = sqlalchemy.create_engine(url, pool_pre_ping=True)
    return _ENGINES[url]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:80]


def take_slot(study: optuna.Study, storage_url: str, budget: int) -> optuna.Trial | None:
    """Ask for a trial if the trials that spent budget plus the running ones (confirmation
    repeats aside: they spend none) leave room in the budget, else None.

    Both are counted under the lock and from one read of the study: a trial another worker
    finishes meanwhile is then seen either as running or as finished, never as neither (two
    reads, finished first and running second, can miss it and overshoot the budget). The read
    is the study's index (:class:`search.storage.TrialIndex`): the trials finished since the last look
    and those open then, whatever the size of the study. Stale
    trials (their worker died) are failed first, which also queues their retry. The new
    trial's first heartbeat is recorded at once, so that even a worker killed a moment later
    leaves a trial the next one can find stale."""
    with budget_lock(storage_url, study.study_name):
        fail_stale(study)
        index = trial_index(study)  # one read: the new trials and those open when last read
        running = sum(1 for r in index.open() if r.state == "RUNNING" and not is_repeat(r))
        if running + spent_in(index) >= budget:
            return None
        with warnings.catch_warnings():  # we run the heartbeat ourselves (class Heartbeat)
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = study.ask()
        first_heartbeat(study, trial)
        return trial


def fail_stale(study: optuna.Study) -> None:
    """Fail the trials whose worker died (their heartbeat is stale), which queues their retry.

    A trial whose worker died between starting it and its first heartbeat has no heartbeat to
    go stale, and Optuna's check never fails it: it ran forever, and the workers waited on it
    forever (the budget counts it; confirmation waits for it). Such a trial is failed too, once
    this process has seen it without a heartbeat for the grace period (its own clock: no
    comparison of clocks or time zones across machines). A live worker records the first beat
    within milliseconds of the start, under the budget lock this check also holds."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    if heartbeat_interval(study):
        _fail_never_beaten(study)


# For each storage object: the running trials this process saw without a heartbeat, and when
# it first saw each (weak keys: a closed study's storage leaves nothing behind).
_FIRST_SEEN_WITHOUT_BEAT: weakref.WeakKeyDictionary[object, dict[int, float]] = weakref.WeakKeyDictionary()


def _fail_never_beaten(study: optuna.Study) -> None:
    storage = study_storage(study)
    now, grace = time.monotonic(), grace_period(study)
    earlier = _FIRST_SEEN_WITHOUT_BEAT.get(storage, {})
    # A trial no longer listed started beating or ended meanwhile: it is forgotten.
    seen = {i: earlier.get(i, now) for i in running_without_heartbeat(study)}
    _FIRST_SEEN_WITHOUT_BEAT[storage] = {i: first for i, first in seen.items() if now - first < grace}
    for orphan, first in seen.items():
        if now - first >= grace:
            fail_as_stale(study, orphan)


def first_heartbeat(study: optuna.Study, trial: optuna.Trial) -> None:
    """Record a new trial's first heartbeat at once, so that even a worker killed a moment
    later leaves a trial the next one can find stale."""
    if heartbeat_interval(study):
        record_heartbeat(study_storage(study), trial_id(trial))


class Heartbeat:
    """Records a heartbeat for a running trial in a background thread (RDB storages only)."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial) -> None:
        self._study_storage = study_storage(study)
        self._id = trial_id(trial)
        self._interval = heartbeat_interval(study)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self._interval:
            self._thread = threading.Thread(target=self._beat, args=(self._interval,), daemon=True)
            self._thread.start()
        return self

    def _beat(self, interval: float) -> None:
        while True:
            try:
                record_heartbeat(self._study_storage, self._id)
            except Exception:  # noqa: BLE001  (a missed beat is retried; the trial goes on)
                pass
            if self._stop.wait(interval):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
