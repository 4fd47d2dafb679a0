"""``--confirm R`` in a driver: after the budget, take the next confirmation run under the budget
lock, so that several workers, machines or the Ray driver share the work and none repeats it.

Which configuration needs a run is decided by :func:`search.strategies.confirmation.plan_confirmation`
from the study itself (its runs, and the repeats queued or running), so a search killed during
confirmation loses nothing and repeats nothing when it is run again: a repeat whose worker died
is failed as stale and its retry (which keeps ``repeat_of``) is taken first.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from search.backends.budget import budget_lock, fail_stale, first_heartbeat
from search.backends.study import carried_attrs
from search.compat import take_waiting_trial
from search.storage import REPEAT_OF, is_repeat, to_record
from search.strategies.confirmation import ConfirmationPlan, plan_confirmation

__all__ = ["RepeatSlot", "take_repeat"]


@dataclass
class RepeatSlot:
    """What :func:`take_repeat` found: a started repeat (``trial``), or none because the rest is
    running elsewhere (``done`` False: ask again later) or because confirmation is over."""

    trial: optuna.Trial | None
    plan: ConfirmationPlan
    running: int  # trials running in the study besides this one
    done: bool

    @property
    def repeat_of(self) -> int | None:
        return None if self.trial is None else int(self.trial.user_attrs[REPEAT_OF])


def take_repeat(study: optuna.Study, storage_url: str, objectives: list[str], repeats: int) -> RepeatSlot:
    """Start the next confirmation run of the study: a queued repeat (the retry of one whose
    worker died) first, else a new repeat of the configuration the plan names. Confirmation is
    over when nothing is missing and nothing runs (a running trial may still move the front)."""
    with budget_lock(storage_url, study.study_name):
        fail_stale(study)
        trials = study.get_trials(deepcopy=False)
        waiting = [t for t in trials if t.state == TrialState.WAITING and is_repeat(t)]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        pending = Counter(int(t.user_attrs[REPEAT_OF]) for t in [*waiting, *running] if is_repeat(t))
        records = [to_record(t, objectives) for t in trials]
        plan = plan_confirmation(records, objectives, repeats, pending)
        if not waiting and plan.next is not None:
            first = trials[plan.next]
            study.enqueue_trial(dict(first.params), user_attrs={**carried_attrs(first), REPEAT_OF: plan.next})
            waiting = [t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) if is_repeat(t)]
        for queued in waiting:
            trial = take_waiting_trial(study, queued)
            if trial is not None:
                first_heartbeat(study, trial)
                return RepeatSlot(trial, plan, len(running), False)
        return RepeatSlot(None, plan, len(running), not running and plan.next is None)
