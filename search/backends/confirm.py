"""``--confirm R`` in a driver: after the budget, take the next confirmation run under the budget
lock, so that several workers, machines or the Ray driver share the work and none repeats it.

Which configuration needs a run is decided by :func:`search.strategies.confirmation.plan_confirmation`
from the study itself (its runs, and the repeats queued or running; read through the study's
index, :class:`search.storage.TrialIndex`, so that each run costs the same whatever the size of the
study), so a search killed during
confirmation loses nothing and repeats nothing when it is run again: a repeat whose worker died
is failed as stale and its retry (which keeps ``repeat_of``) is taken first.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import optuna

from search.backends.budget import budget_lock, fail_stale, first_heartbeat
from search.backends.study import carried_attrs
from search.compat import take_waiting_trial
from search.reporting.front import configurations_in
from search.storage import REPEAT_OF, is_repeat, trial_index
from search.strategies.confirmation import ConfirmationPlan, plan_for

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


def take_repeat(
    study: optuna.Study, storage_url: str, objectives: list[str], repeats: int, race: int = 0
) -> RepeatSlot:
    """Start the next confirmation run of the study: a queued repeat (the retry of one whose
    worker died) first, else a new repeat of the configuration the plan names (``race``: the
    runs beyond ``repeats + 1`` an unresolved front member may get). Confirmation is
    over when nothing is missing and nothing runs (a running trial may still move the front)."""
    with budget_lock(storage_url, study.study_name):
        fail_stale(study)
        index = trial_index(study)  # the trials finished since the last look, and the open ones
        waiting = [r.number for r in index.open() if r.state == "WAITING" and is_repeat(r)]
        running = [r for r in index.open() if r.state == "RUNNING"]
        pending = Counter(int(r.user_attrs[REPEAT_OF]) for r in index.open() if is_repeat(r))
        plan = plan_for(configurations_in(index), objectives, repeats, pending, race)
        if not waiting and plan.next is not None:
            first = index.frozen(plan.next)
            study.enqueue_trial(dict(first.params), user_attrs={**carried_attrs(first), REPEAT_OF: plan.next})
            index = trial_index(study)
            waiting = [r.number for r in index.open() if r.state == "WAITING" and is_repeat(r)]
        for number in waiting:
            trial = take_waiting_trial(study, index.frozen(number))
            if trial is not None:
                first_heartbeat(study, trial)
                return RepeatSlot(trial, plan, len(running), False)
        return RepeatSlot(None, plan, len(running), not running and plan.next is None)
