"""The study storage: the single source of truth of a search.

Everything a report or an export needs is recorded in the Optuna storage: the study's
attributes (space fingerprint, dataset, objectives, reference point, training settings) and
each trial's attributes (architecture JSON, both MFLOPs counts, parameters, per-epoch
curves, time, device, seed, status). :func:`load_records` reads them back as plain records,
so reports and exports can be rebuilt after a crash, on another machine, or while a search
is still running.
"""

from __future__ import annotations

import random
import sqlite3
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from models import Architecture
from search.settings import OBJECTIVE_SENSES, mask_url, scrub, url_secrets

__all__ = [
    "OBJECTIVE_SENSES",
    "REPEAT_OF",
    "StorageError",
    "StudyMismatch",
    "TrialRecord",
    "check_own_study",
    "check_storage_url",
    "find_study",
    "is_repeat",
    "load_records",
    "open_storage",
    "study_objectives",
    "to_record",
]

HEARTBEAT_SECONDS = 10
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


def _status(trial: FrozenTrial) -> str:
    if trial.state == TrialState.RUNNING:
        return "running"
    if trial.state == TrialState.WAITING:  # enqueued (a baseline, a retry), not started yet
        return "queued"
    if trial.state == TrialState.FAIL:
        return "failed"
    if trial.state == TrialState.PRUNED:
        return "early_stopped"
    return str(trial.user_attrs.get("status", "ok"))


def is_repeat(trial: FrozenTrial) -> bool:
    """Whether a trial is a confirmation run (:data:`REPEAT_OF`)."""
    return REPEAT_OF in trial.user_attrs


def to_record(trial: FrozenTrial, objectives: list[str]) -> TrialRecord:
    attrs = trial.user_attrs
    arch = Architecture.from_json(attrs["architecture"]) if "architecture" in attrs else None
    values = dict(zip(objectives, trial.values)) if trial.values else {}
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        status=_status(trial),
        values=values,
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
        or ("stopped without a result (its process was killed or lost)" if trial.state == TrialState.FAIL else None),
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        epochs_run=attrs.get("epochs_run"),
        user_attrs=dict(attrs),
    )


def load_records(study: optuna.Study) -> list[TrialRecord]:
    objectives = list(study.user_attrs.get("objectives", ["accuracy", "mflops"]))
    return [to_record(t, objectives) for t in study.get_trials(deepcopy=False)]


def study_objectives(study: optuna.Study) -> list[str]:
    return list(study.user_attrs.get("objectives", ["accuracy", "mflops"]))
