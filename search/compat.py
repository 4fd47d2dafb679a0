"""Every use of Optuna's and Ray's private API, in one place.

The tool needs a few things neither library offers publicly: failing a trial that another
process owns, recording a heartbeat for a trial it runs itself, opening a second study on the
storage an open study already holds, reading the Optuna study and trials that Ray Tune's
``OptunaSearch`` keeps, and finding the cluster Ray's ``address="auto"`` would join. Each is one
small function here, so that a new Optuna or Ray release breaks this module and its test
(``tests/test_compat.py``, which also pins the versions known to work) rather than a search.
"""

from __future__ import annotations

from typing import Any

import optuna
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
