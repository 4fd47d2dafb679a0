"""Every use of Optuna's and Ray's private API, in one place.

The tool needs a few things neither library offers publicly: failing a trial that another
process owns, recording a heartbeat for a trial it runs itself, finding the running trials that
never recorded one, opening a second study on the storage an open study already holds, reading
the Optuna study and trials that Ray Tune's ``OptunaSearch`` keeps, finding the cluster Ray's
``address="auto"`` would join, and reading a study's trials from an RDB storage without building
every trial's full ORM object (:func:`read_trial_rows`: a study of thousands of trials is read
in a few light queries, and only the trials that are new or still open afterwards). Each is one
small function here, so that a new Optuna or Ray release breaks this module and its test
(``tests/test_compat.py``, which also pins the versions known to work) rather than a search.
"""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

# The releases this module was written and tested against (major.minor); tests/test_compat.py
# fails on any other, so that an upgrade is a deliberate step that re-reads this file.
KNOWN_VERSIONS = {"optuna": ("5.0",), "ray": ("2.60",)}


def study_storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage object an open study uses (to open another study on the same connection)."""
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (the number counts within a study; the id across studies)."""
    return trial._trial_id


def fail_trial(study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
    """Mark a running trial FAILED with ``fail_reason``, whichever process owns it (Optuna's
    public ``tell`` only finishes trials that this process asked for)."""
    storage = study_storage(study)
    storage.set_trial_user_attr(trial_id(trial), "fail_reason", reason)
    storage.set_trial_state_values(trial_id(trial), TrialState.FAIL)


def take_waiting_trial(study: optuna.Study, trial: FrozenTrial) -> optuna.Trial | None:
    """Start one particular queued (WAITING) trial, as ``Study.ask`` starts the oldest one, or
    None when another process started it first. ``ask`` offers no choice of which queued trial
    it runs, and a confirmation run must not start a queued baseline or retry instead."""
    try:
        if not study_storage(study).set_trial_state_values(trial_id(trial), TrialState.RUNNING):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    return optuna.Trial(study, trial_id(trial))


def set_user_attrs(study: optuna.Study, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Set several user attributes of a running trial in one transaction. ``Trial.set_user_attr``
    commits each one on its own: a dozen commits a trial, each a disk sync of an SQLite file
    (about 20 ms on a slow disk). The trial's own copy is updated as ``set_user_attr`` does."""
    backend = rdb_storage(study_storage(study))
    if backend is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(backend.scoped_session, True) as session:
        for key, value in attrs.items():
            backend._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id(trial), key, value)
    trial._cached_frozen_trial.user_attrs.update(attrs)


def heartbeat_interval(study: optuna.Study) -> int | None:
    """The study storage's heartbeat interval in seconds (None: no heartbeat, e.g. in-memory)."""
    return getattr(study_storage(study), "get_heartbeat_interval", lambda: None)()


def record_heartbeat(storage: optuna.storages.BaseStorage, trial_id_: int) -> None:
    """Record that a trial is alive (what Optuna's own optimize loop does for its trials)."""
    storage.record_heartbeat(trial_id_)


def ray_searcher_study(searcher: Any) -> optuna.Study:
    """The Optuna study inside Ray Tune's ``OptunaSearch``."""
    return searcher._ot_study


def ray_searcher_trials(searcher: Any) -> dict[str, optuna.Trial]:
    """Ray's trial id -> the Optuna trial ``OptunaSearch`` asked for it (running trials)."""
    return searcher._ot_trials


def ray_searcher_completed(searcher: Any) -> set[str]:
    """The Ray trial ids ``OptunaSearch`` has already told the study about."""
    return searcher._completed_trials


def ray_auto_address() -> str:
    """The address ``ray.init(address="auto")`` would join: RAY_ADDRESS, else the cluster that
    ``ray start`` recorded on this machine (or a running one Ray finds); ConnectionError if none."""
    from ray._private.services import get_ray_address_from_environment

    return get_ray_address_from_environment("auto", None)


def grace_period(study: optuna.Study) -> float:
    """How old a running trial's heartbeat may be before the trial is stale (Optuna's rule)."""
    storage = study_storage(study)
    backend = rdb_storage(storage) or storage
    grace = getattr(backend, "grace_period", None)
    return float(grace if grace is not None else 2 * (heartbeat_interval(study) or 0))


def fail_as_stale(study: optuna.Study, trial_id_: int) -> None:
    """Fail a running trial as Optuna fails a stale one, its stale-trial callback (the retry)
    included; nothing when another process finished it first."""
    storage = study_storage(study)
    try:
        if not storage.set_trial_state_values(trial_id_, state=TrialState.FAIL):
            return
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    if callback is not None:
        callback(study, copy.deepcopy(storage.get_trial(trial_id_)))


def running_without_heartbeat(study: optuna.Study) -> list[int]:
    """The ids of the study's RUNNING trials that have no heartbeat recorded at all (RDB storages
    only; else none). Optuna's stale check skips them (a trial is stale only once its recorded
    heartbeat is old), so a worker killed between starting a trial and its first beat left a
    trial that is running forever."""
    import sqlalchemy

    rdb = rdb_storage(study_storage(study))
    if rdb is None:
        return []
    from optuna.storages._rdb import models

    with rdb.engine.connect() as connection:
        rows = connection.execute(
            sqlalchemy.select(models.TrialModel.trial_id)
            .outerjoin(models.TrialHeartbeatModel, models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id)
            .where(models.TrialModel.study_id == study_id(study))
            .where(models.TrialModel.state == TrialState.RUNNING)
            .where(models.TrialHeartbeatModel.trial_heartbeat_id.is_(None))
        )
        return [int(row[0]) for row in rows]


def study_id(study: optuna.Study) -> int:
    """The storage's id of a study (a storage may hold several studies)."""
    return study._study_id


def rdb_storage(storage: optuna.storages.BaseStorage) -> RDBStorage | None:
    """The RDB storage behind ``storage`` (Optuna wraps an ``RDBStorage`` in its per-process
    trial cache), or None for any other kind (in memory, journal)."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


@dataclass(frozen=True)
class TrialRow:
    """One trial as :func:`read_trial_rows` reads it: what a ``FrozenTrial`` holds but its
    parameters, distributions and intermediate values, and only the system attributes asked for."""

    trial_id: int
    number: int
    state: TrialState
    values: list[float] | None
    datetime_start: datetime.datetime | None
    datetime_complete: datetime.datetime | None
    user_attrs: dict[str, Any]
    system_attrs: dict[str, Any]


def _local_time(utc: datetime.datetime | None) -> datetime.datetime | None:
    """A stored naive UTC time as the naive local time Optuna's ``FrozenTrial`` gives."""
    if utc is None:
        return None
    return utc.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)


def read_trial_rows(
    storage: RDBStorage,
    study_id_: int,
    after_id: int = -1,
    ids: Collection[int] = (),
    system_keys: Collection[str] = ("failed_trial",),
) -> list[TrialRow]:
    """The trials of study ``study_id_`` whose id is above ``after_id`` or in ``ids``, by id, in
    four light queries (trials, values, user attributes, the ``system_keys`` system attributes)
    whatever their number. Optuna's own ``get_trials`` builds a full ORM object of every trial
    and of each of its attributes; a report of thousands of trials spent seconds there.

    The queries are not one snapshot: a trial read as open may already carry attributes it
    wrote after the first query, which is harmless (an open trial is read again), and a trial
    read as finished has every attribute (Optuna writes them before the state)."""
    import sqlalchemy
    from optuna.storages._rdb import models

    trial = models.TrialModel
    ids = list(ids)
    wanted = trial.trial_id > after_id
    if ids:
        wanted = sqlalchemy.or_(wanted, trial.trial_id.in_(ids))
    scope = sqlalchemy.and_(trial.study_id == study_id_, wanted)
    value, user, system = models.TrialValueModel, models.TrialUserAttributeModel, models.TrialSystemAttributeModel
    with storage.engine.connect() as connection:
        heads = connection.execute(
            sqlalchemy.select(
                trial.trial_id,
                trial.number,
                trial.state,
                trial._datetime_start_utc,
                trial._datetime_complete_utc,
            )
            .where(scope)
            .order_by(trial.trial_id)
        ).all()
        values = connection.execute(
            sqlalchemy.select(value.trial_id, value.objective, value.value, value.value_type)
            .join(trial, trial.trial_id == value.trial_id)
            .where(scope)
        ).all()
        users = connection.execute(
            sqlalchemy.select(user.trial_id, user.key, user.value_json)
            .join(trial, trial.trial_id == user.trial_id)
            .where(scope)
            .order_by(user.trial_user_attribute_id)
        ).all()
        systems = (
            connection.execute(
                sqlalchemy.select(system.trial_id, system.key, system.value_json)
                .join(trial, trial.trial_id == system.trial_id)
                .where(scope, system.key.in_(list(system_keys)))
                .order_by(system.trial_system_attribute_id)
            ).all()
            if system_keys
            else []
        )
    objective_values: dict[int, dict[int, float]] = {}
    for trial_id_, objective, stored, kind in values:
        objective_values.setdefault(trial_id_, {})[objective] = value.stored_repr_to_value(stored, kind)
    user_attrs = _attributes(users)
    system_attrs = _attributes(systems)
    rows = []
    for trial_id_, number, state, start, complete in heads:
        by_objective = objective_values.get(trial_id_)
        rows.append(
            TrialRow(
                trial_id=trial_id_,
                number=number,
                state=state,
                values=[by_objective[k] for k in sorted(by_objective)] if by_objective else None,
                datetime_start=_local_time(start),
                datetime_complete=_local_time(complete),
                user_attrs=user_attrs.get(trial_id_, {}),
                system_attrs=system_attrs.get(trial_id_, {}),
            )
        )
    return rows


def _attributes(rows: Sequence[Any]) -> dict[int, dict[str, Any]]:
    """``(trial_id, key, value_json)`` rows as each trial's attributes. Every value is one JSON
    text Optuna wrote with ``json.dumps``; they are decoded in one call, as the items of one
    JSON array (tens of thousands of separate calls cost most of reading a large study)."""
    decoded = json.loads("[" + ",".join(text for _, _, text in rows) + "]") if rows else []
    found: dict[int, dict[str, Any]] = {}
    for (trial_id_, key, _), value in zip(rows, decoded):
        found.setdefault(trial_id_, {})[key] = value
    return found
