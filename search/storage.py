"""The study storage: the single source of truth of a search.

Everything a report or an export needs is recorded in the Optuna storage: the study's
attributes (space fingerprint, dataset, objectives, reference point, training settings) and
each trial's attributes (architecture JSON, both MFLOPs counts, parameters, per-epoch
curves, time, device, seed, status). :func:`load_records` reads them back as plain records,
so reports and exports can be rebuilt after a crash, on another machine, or while a search
is still running. It reads them through the process's index of the study
(:class:`TrialIndex`): each finished trial is read and turned into a record once.
"""

from __future__ import annotations

import functools
import json
import random
import sqlite3
import time
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from models import Architecture
from search.compat import TrialRow, rdb_storage, read_trial_rows, study_id, study_storage, trial_id
from search.settings import OBJECTIVE_SENSES, mask_url, scrub, url_secrets

__all__ = [
    "OBJECTIVE_SENSES",
    "REPEAT_OF",
    "StorageError",
    "StudyMismatch",
    "TrialIndex",
    "TrialRecord",
    "check_own_study",
    "check_storage_url",
    "find_study",
    "is_repeat",
    "load_records",
    "make_record",
    "open_storage",
    "study_objectives",
    "to_record",
    "trial_index",
]

HEARTBEAT_SECONDS = 10
# What a study that has not recorded its objectives is taken to optimize.
DEFAULT_OBJECTIVES = ["accuracy", "mflops"]
# The user attribute of a confirmation run (``--confirm``): the number of the configuration it
# repeats with a new seed. Repeats spend no budget; they only measure their configuration again.
REPEAT_OF = "repeat_of"
# Trial statuses (user attribute "status"); only "ok" trials can be on the Pareto front.
STATUSES = ("ok", "infeasible", "failed", "early_stopped", "running", "queued")


class StorageError(ValueError):
    """The storage URL is malformed or the storage cannot be reached."""


class StudyMismatch(ValueError):
    """A study of that name exists with a different space, dataset or objectives."""


def _sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None: in memory, or not SQLite)."""
    if not url.startswith("sqlite:"):
        return None
    path = url.split("sqlite:///", 1)[-1].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def check_storage_url(url: str, mode: str) -> None:
    """Refuse a storage URL before anything is written. ``mode``: ``read`` (report, export:
    the database must exist), ``explicit`` (a ``--storage`` of a search: its folder must
    exist, so a typo never starts a new study elsewhere) or ``default`` (the storage under
    ``--results-dir``, created when missing)."""
    if "://" not in url:
        raise StorageError(
            f"storage {url!r} is not a URL; use e.g. sqlite:///results/studies.db or postgresql://user@host/db"
        )
    if url.startswith("sqlite:") and (not url.startswith("sqlite:///") or ":memory:" in url):
        raise StorageError(
            f"storage {url} is in memory: the study would be lost when the command ends; give a file, "
            "e.g. sqlite:///results/studies.db"
        )
    path = _sqlite_file(url)
    if path is None:
        return
    try:
        _check_sqlite_file(url, path, mode)
    except OSError as err:  # e.g. a name too long for the file system
        raise StorageError(f"storage {url} cannot be used: {err.strerror}") from None


def _check_sqlite_file(url: str, path: Path, mode: str) -> None:
    if path.exists() and not path.is_file():
        raise StorageError(f"storage {url}: {path} is not a file")
    if mode == "read" and not path.is_file():
        raise StorageError(f"no storage at {path}: no search has written there; check --results-dir or --storage")
    if mode == "explicit" and not path.parent.is_dir():
        raise StorageError(
            f"the folder of storage {url} does not exist; create it first (mkdir -p {path.parent}) "
            "or leave --storage out to use <results-dir>/studies.db"
        )
    if mode == "read" or (path.is_file() and path.stat().st_size > 0):  # an empty file: a new storage
        _check_optuna_tables(url, path)


def _check_optuna_tables(url: str, path: Path) -> None:
    """Refuse an existing SQLite file that holds no Optuna storage (another program's
    database), read only: Optuna itself would create its tables in it. A storage of an older
    Optuna schema still has its ``studies`` table, and is left to Optuna to judge."""
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=120)
        try:
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'studies'").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError:  # cannot read it now (locked, permissions): Optuna says why
        return
    except sqlite3.DatabaseError:
        raise StorageError(f"storage {url}: {path} is not an Optuna storage (not an SQLite database)") from None
    if found is None:
        raise StorageError(f"storage {url}: {path} is not an Optuna storage (it has no studies table)")


def open_storage(url: str, heartbeat: bool = False, create: bool = True) -> optuna.storages.BaseStorage:
    """Open an Optuna storage URL with a one-line error when it is malformed or unreachable.

    SQLite gets a long busy timeout so parallel writers wait instead of failing with
    "database is locked". With ``heartbeat``, RDB storages record a heartbeat per running
    trial so that trials of a killed process are detected as stale and failed. Without
    ``create`` a missing SQLite file (or its folder) is an error instead of being created.
    Passwords never appear in the errors.
    """
    shown = mask_url(url)
    check_storage_url(url, "default" if create else "read")
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        path = _sqlite_file(url)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StorageError(f"cannot create the folder of storage {url}: {err.strerror}") from None
        engine_kwargs = {"connect_args": {"timeout": 120}}
    extra: dict[str, Any] = {}
    if heartbeat:
        # A trial whose process died is failed once its heartbeat is this old, and its
        # configuration is queued again once.
        extra = {
            "heartbeat_interval": HEARTBEAT_SECONDS,
            "grace_period": 3 * HEARTBEAT_SECONDS,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=1),
        }
    try:
        return _rdb_storage(url, engine_kwargs, extra)
    except ImportError as err:
        reason = scrub(str(err), url_secrets(url))
        raise StorageError(
            f"storage {shown}: a database driver is missing ({reason}); install it, e.g. psycopg2-binary"
        ) from None
    except Exception as err:  # noqa: BLE001  (SQLAlchemy raises many kinds; all mean "cannot use it")
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StorageError(f"cannot open storage {shown}: {scrub(reason, url_secrets(url))[:300]}") from None


def _rdb_storage(url: str, engine_kwargs: dict[str, Any], extra: dict[str, Any], attempts: int = 6) -> RDBStorage:
    """RDBStorage, retried when workers that start together race to create the tables of an
    empty database (all but one fail with a duplicate-key error)."""
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine_kwargs, **extra)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + random.random() * (attempt + 1))
    raise AssertionError("unreachable")


def find_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study | None:
    """The study called ``name``, or None (never creates one)."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def check_own_study(
    study: optuna.Study, url: str, option: str, directions: list[optuna.study.StudyDirection] | None = None
) -> None:
    """Refuse a study this tool did not make (another program's, in the same storage) before
    anything is written to it. Its creator writes the attribute ``space`` first, so a study
    without it is another program's, except one just created (by this process, or by a
    sibling worker still writing its settings): no trials, no attributes and, where
    ``directions`` (those of this run) are given, the same directions. ``option``: the
    command-line option that names the study, for the hint. ``url``: the storage's (shown
    masked)."""
    shown_url = mask_url(url)
    attrs = study.user_attrs
    if "space" in attrs:
        return
    trials = len(study.get_trials(deepcopy=False))
    wrong_directions = directions is not None and list(study.directions) != list(directions)
    if not trials and not attrs and not wrong_directions:
        if directions is not None:
            return
        raise StudyMismatch(  # report, export: nothing to read yet, whoever made it
            f"study '{study.study_name}' in {shown_url} has no search settings yet (a search is still setting it "
            f"up, or another program made it); try again later, or choose another {option} or storage"
        )
    what = [f"{trials} trial{'' if trials == 1 else 's'}"]
    if wrong_directions and not trials:  # only then is it what shows the study is not this tool's
        what.append(f"{len(study.directions)} objective{'' if len(study.directions) == 1 else 's'}")
    shown = ", ".join(sorted(attrs)[:3]) + (", ..." if len(attrs) > 3 else "")
    settings = f"attributes this tool does not write ({shown})" if attrs else "no search settings"
    raise StudyMismatch(
        f"study '{study.study_name}' in {shown_url} was not made by this tool (it has {', '.join(what)} and "
        f"{settings}); choose another {option} or storage"
    )


@dataclass
class TrialRecord:
    """One trial as reports and exports see it."""

    number: int
    state: str  # optuna state name
    status: str  # ok, infeasible, failed, early_stopped, running, queued
    values: dict[str, float]  # objective name -> value (empty unless complete)
    architecture: Architecture | None
    mflops: float | None
    mflops_all_ops: float | None
    params: int | None
    curve: list[dict[str, Any]]
    train_seconds: float | None
    device: str | None
    seed: int | None
    baseline: str | None  # uniform value when the trial is a queued baseline
    hyperparameters: dict[str, Any]
    fail_reason: str | None
    datetime_start: datetime | None
    datetime_complete: datetime | None
    epochs_run: int | None
    user_attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float | None:
        return self.values.get("accuracy")

    @property
    def repeat_of(self) -> int | None:
        """The configuration this trial repeats (``--confirm``), or None."""
        value = self.user_attrs.get(REPEAT_OF)
        return int(value) if isinstance(value, int) else None

    @property
    def feasible_complete(self) -> bool:
        """Complete, feasible and trained to full fidelity: may be on the Pareto front."""
        return self.state == "COMPLETE" and self.status == "ok"

    @functools.cached_property
    def config(self) -> str | None:
        """What identifies the configuration the trial ran: its architecture and hyperparameters
        as canonical JSON (None for a trial that never had an architecture, e.g. still queued).
        Computed once per record: fronts group thousands of runs by it."""
        arch = self.user_attrs.get("architecture")
        if arch is None:
            return None
        return json.dumps({"architecture": arch, "hyperparameters": self.hyperparameters}, sort_keys=True)


def _status(state: TrialState, attrs: Mapping[str, Any]) -> str:
    if state == TrialState.RUNNING:
        return "running"
    if state == TrialState.WAITING:  # enqueued (a baseline, a retry), not started yet
        return "queued"
    if state == TrialState.FAIL:
        return "failed"
    if state == TrialState.PRUNED:
        return "early_stopped"
    return str(attrs.get("status", "ok"))


def is_repeat(trial: FrozenTrial | TrialRecord) -> bool:
    """Whether a trial is a confirmation run (:data:`REPEAT_OF`)."""
    return REPEAT_OF in trial.user_attrs


def make_record(
    number: int,
    state: TrialState,
    values: Sequence[float] | None,
    datetime_start: datetime | None,
    datetime_complete: datetime | None,
    attrs: Mapping[str, Any],
    objectives: list[str],
) -> TrialRecord:
    """The record of a trial from what the storage holds of it (a ``FrozenTrial``'s fields, or
    a light row of :func:`search.compat.read_trial_rows`)."""
    arch = Architecture.from_json(attrs["architecture"]) if "architecture" in attrs else None
    return TrialRecord(
        number=number,
        state=state.name,
        status=_status(state, attrs),
        values=dict(zip(objectives, values)) if values else {},
        architecture=arch,
        mflops=attrs.get("mflops"),
        mflops_all_ops=attrs.get("mflops_all_ops"),
        params=attrs.get("params"),
        curve=list(attrs.get("curve", [])),
        train_seconds=attrs.get("train_seconds"),
        device=attrs.get("device"),
        seed=attrs.get("seed"),
        baseline=attrs.get("baseline"),
        hyperparameters=dict(attrs.get("hyperparameters", {})),
        fail_reason=attrs.get("fail_reason")
        or ("stopped without a result (its process was killed or lost)" if state == TrialState.FAIL else None),
        datetime_start=datetime_start,
        datetime_complete=datetime_complete,
        epochs_run=attrs.get("epochs_run"),
        user_attrs=dict(attrs),
    )


def to_record(trial: FrozenTrial, objectives: list[str]) -> TrialRecord:
    return make_record(
        trial.number,
        trial.state,
        trial.values,
        trial.datetime_start,
        trial.datetime_complete,
        trial.user_attrs,
        objectives,
    )


def load_records(study: optuna.Study) -> list[TrialRecord]:
    """Every trial of ``study`` as a record, by number. Read through the process's index of the
    study (:func:`trial_index`): each finished trial is read once, so a search that asks again
    after every trial reads only what changed."""
    return trial_index(study).records()


def study_objectives(study: optuna.Study) -> list[str]:
    return list(study.user_attrs.get("objectives", DEFAULT_OBJECTIVES))


# ---------------------------------------------------------------------------------------------
# The index of a study's trials in this process
# ---------------------------------------------------------------------------------------------
# A study's trials as one process sees them, read once: every finished trial is read from the
# storage and made a :class:`~search.storage.TrialRecord` once (a finished trial never changes),
# and each later look reads only the trials that are new or still open (running, queued).
#
# Why: a study of thousands of trials made the tool itself slow. After every trial the drivers
# read every trial's full attributes (architecture JSON, per-epoch curves) several times over, for
# the budget count, a retry's origin, the rung peers, the progress line's front and the
# confirmation plan, and the report and export built every record from Optuna's full ORM objects.
# With the index a look costs the same few queries whatever the size of the study (on an RDB
# storage, :func:`search.compat.read_trial_rows`: four statements), and what is derived from the
# finished trials (the budget count, the configurations and their front) is folded in
# incrementally (:meth:`TrialIndex.fold`).
#
# One index per study and storage object (:func:`trial_index`). Storages other than RDB ones (in
# memory, journal) are read whole on each look, through Optuna's own trial cache.

T = TypeVar("T")


class TrialIndex:
    """The trials of one study, kept in this process and brought up to date by :meth:`refresh`.

    ``records()`` gives every trial by number; ``finished`` the finished ones in the order this
    index first saw them finished (a log that only grows, which :meth:`fold` walks once);
    ``open()`` the running and queued ones, read again on every refresh."""

    def __init__(self, storage: optuna.storages.BaseStorage, study_id_: int) -> None:
        self._source = storage
        self._rdb = rdb_storage(storage)
        self._study_id = study_id_
        self._objectives: list[str] | None = None  # None: the study has not recorded them yet
        self._reset(DEFAULT_OBJECTIVES)

    def _reset(self, objectives: list[str]) -> None:
        self.objectives = list(objectives)
        self._by_number: list[TrialRecord | None] = []
        self._ids: list[int] = []  # trial id by number
        self._finished: list[TrialRecord] = []
        self._open: dict[int, int] = {}  # trial id -> number of the trials not finished when last read
        self._watermark = -1  # the largest id of a finished trial read: above it, every trial is read again
        self._parents: dict[int, int] = {}  # a retry's number -> the number of the trial it retries
        self._folds: dict[Callable[..., Any], tuple[int, Any]] = {}

    # -- reading -------------------------------------------------------------------------

    def _current_objectives(self) -> list[str]:
        if self._objectives is None:
            recorded = self._source.get_study_user_attrs(self._study_id).get("objectives")
            if recorded is None:
                return DEFAULT_OBJECTIVES
            self._objectives = list(recorded)  # a study's objectives never change once recorded
        return self._objectives

    def _rows(self) -> list[TrialRow]:
        if self._rdb is not None:
            return read_trial_rows(self._rdb, self._study_id, self._watermark, self._open)
        rows = []
        for trial in self._source.get_all_trials(self._study_id, deepcopy=False):
            if trial.number < len(self._by_number) and trial.state.is_finished():
                known = self._by_number[trial.number]
                if known is not None and known.state == trial.state.name:
                    continue  # finished and read already
            rows.append(
                TrialRow(
                    trial_id(trial),
                    trial.number,
                    trial.state,
                    trial.values,
                    trial.datetime_start,
                    trial.datetime_complete,
                    trial.user_attrs,
                    {k: v for k, v in trial.system_attrs.items() if k == "failed_trial"},
                )
            )
        return rows

    def refresh(self) -> TrialIndex:
        """Read the trials that are new or were open when last read; returns the index."""
        objectives = self._current_objectives()
        if objectives != self.objectives:  # recorded after this index first read the study
            self._reset(objectives)
        for row in self._rows():
            record = make_record(
                row.number,
                row.state,
                row.values,
                row.datetime_start,
                row.datetime_complete,
                row.user_attrs,
                objectives,
            )
            if row.number >= len(self._by_number):
                self._by_number.extend([None] * (row.number + 1 - len(self._by_number)))
                self._ids.extend([-1] * (row.number + 1 - len(self._ids)))
            before = self._by_number[row.number]
            self._ids[row.number] = row.trial_id
            self._by_number[row.number] = record
            parent = row.user_attrs.get("retry_of", row.system_attrs.get("failed_trial"))
            if parent is not None:
                self._parents[row.number] = int(parent)
            if row.state.is_finished():
                self._open.pop(row.trial_id, None)
                self._watermark = max(self._watermark, row.trial_id)
                if before is None or not TrialState[before.state].is_finished():
                    self._finished.append(record)
            else:
                self._open[row.trial_id] = row.number
        return self

    # -- what the callers ask ------------------------------------------------------------

    def records(self) -> list[TrialRecord]:
        """Every trial as last read, by number."""
        return [r for r in self._by_number if r is not None]

    def record(self, number: int) -> TrialRecord | None:
        return self._by_number[number] if 0 <= number < len(self._by_number) else None

    @property
    def finished(self) -> Sequence[TrialRecord]:
        """The finished trials, in the order this index first read them finished."""
        return self._finished

    def open(self) -> list[TrialRecord]:
        """The trials running or queued when last read, by number."""
        found = (self._by_number[n] for n in sorted(self._open.values()))
        return [r for r in found if r is not None]

    def frozen(self, number: int) -> FrozenTrial:
        """Optuna's whole trial ``number`` (parameters included), read from the storage (from
        Optuna's own cache where it holds the trial finished)."""
        return self._source.get_trial(self._ids[number])

    def parent(self, number: int) -> int | None:
        """The trial that trial ``number`` retries (Optuna's stale-trial retry, user attribute
        ``retry_of``), or None."""
        return self._parents.get(number)

    def fold(self, step: Callable[[T, TrialRecord], T], start: Callable[[], T]) -> T:
        """``step`` folded over every finished trial, from ``start()``, incrementally: each call
        folds only the trials finished since the last call with the same ``step`` (a
        module-level function, so that it is the same object every time)."""
        done, value = self._folds.get(step, (0, None))
        if done == 0:
            value = start()
        for record in self._finished[done:]:
            value = step(value, record)
        self._folds[step] = (len(self._finished), value)
        return value


_INDEXES: weakref.WeakKeyDictionary[optuna.storages.BaseStorage, dict[int, TrialIndex]] = weakref.WeakKeyDictionary()


def trial_index(study: optuna.Study) -> TrialIndex:
    """The index of ``study`` in this process, brought up to date. Study objects that share a
    storage object (one ``optuna.load_study`` on another's :func:`search.compat.study_storage`)
    share the index; it goes with the storage object."""
    storage = study_storage(study)
    indexes = _INDEXES.setdefault(storage, {})
    index = indexes.get(study_id(study))
    if index is None:
        index = indexes[study_id(study)] = TrialIndex(storage, study_id(study))
    return index.refresh()
