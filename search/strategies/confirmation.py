"""Confirming the front (``--confirm R``): which configurations get more runs, and how many.

A front of single runs keeps the lucky ones: with candidates as close as the run-to-run noise,
the most accurate end of the front is mostly the configurations whose one training drew a
good seed (the winner's curse). Confirmation trains every configuration on the front R more
times with new seeds, under the same protocol, and recomputes the front on the means after
each run: a configuration whose mean falls off the front hands its place to the next one,
which is then confirmed in turn, until every member of the front has R + 1 runs.

Configurations *within the noise* of the front (no front member dominates them beyond the
noise) could be on it with more runs, so they are confirmed too, the closest first, but at
most as many as the front has members (:func:`search.reporting.configurations.confirmation_candidates`):
on a task where nothing is resolved (every candidate within a point of each other) every
configuration is within the noise, and confirming them all would cost R trainings per trial
of the search. The report says how many were left unconfirmed.

**Racing** (``--race K``, SMAC's intensification applied to a front): R + 1 runs shrink a lucky
member's luck by only sqrt(R + 1), and on a task whose candidates all lie within the noise of
each other the front's accurate end is still the best of many means. So once every member has
its R + 1 runs, a member whose lead over the next cheaper member is not resolved by the noise
(it is on the front only if that lead is real) gets one more run, and the front is recomputed;
this goes on until every lead is resolved or the member has R + 1 + K runs. Only the costlier
member of a pair is raced: it is the one whose place depends on its mean being high.

The rule is a pure function of the study's runs and of the repeats already queued or running,
so any number of workers (and the Ray driver) can ask it under the budget lock and share the
work without repeating any of it.

Example:
    >>> plan = ConfirmationPlan(3, {7: 2, 4: 1}, [7, 4], 2, 0, 0)
    >>> plan.next, plan.remaining
    (7, 3)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from search.reporting.configurations import (
    Configuration,
    Noise,
    confirmation_candidates,
    group_configurations,
    measure_noise,
)
from search.reporting.resolution import unresolved_groups
from search.storage import TrialRecord

__all__ = ["ConfirmationPlan", "contested", "plan_confirmation", "plan_for"]


@dataclass(frozen=True)
class ConfirmationPlan:
    """What confirmation still has to train: ``missing`` runs per configuration number (after
    the repeats already queued or running), in the order to train them."""

    runs_wanted: int  # R + 1
    missing: dict[int, int]
    order: list[int]
    front_size: int
    left_out: int  # configurations within the noise of the front beyond the cap: not confirmed
    raced: int  # front members given a run beyond R + 1 (--race) in this plan

    @property
    def next(self) -> int | None:
        """The configuration to repeat next (None: nothing left to queue)."""
        return self.order[0] if self.order else None

    @property
    def remaining(self) -> int:
        return sum(self.missing.values())


def plan_confirmation(
    records: list[TrialRecord], objectives: list[str], repeats: int, pending: Mapping[int, int], race: int = 0
) -> ConfirmationPlan:
    """The runs still missing for every front member (and every configuration within its
    noise) to have ``repeats + 1`` runs, given ``pending`` repeats (configuration number ->
    repeats queued or running). Front members come first, those with the fewest runs first.
    Then, with ``race`` > 0, one more run for each front member not resolved from the next
    cheaper one (at most ``repeats + 1 + race`` runs each)."""
    return plan_for(group_configurations(records, objectives), objectives, repeats, pending, race)


def plan_for(
    configs: list[Configuration],
    objectives: list[str],
    repeats: int,
    pending: Mapping[int, int],
    race: int = 0,
) -> ConfirmationPlan:
    """:func:`plan_confirmation` of the configurations ``configs`` (grouped already: a running
    search keeps them up to date as its trials finish)."""
    wanted = repeats + 1
    noise = measure_noise(configs)
    front, close, left_out = confirmation_candidates(configs, objectives, noise)
    missing: dict[int, int] = {}
    order: list[int] = []
    for group in (sorted(front, key=lambda c: (c.runs_count, c.number)), close):
        for c in group:
            if c.record.config is None:
                # A trial without an architecture (written by another program) cannot be
                # rebuilt: its repeats would be new candidates, and it would never get its runs.
                continue
            need = wanted - c.runs_count - pending.get(c.number, 0)
            if need > 0:
                missing[c.number] = need
                order.append(c.number)
    raced = 0
    if not order and repeats > 0 and race > 0:
        for c in sorted(contested(front, objectives, noise), key=lambda c: (c.runs_count, c.number)):
            if c.record.config is not None and not pending.get(c.number) and c.runs_count < wanted + race:
                missing[c.number] = 1  # one at a time: the front is recomputed after each run
                order.append(c.number)
                raced += 1
    return ConfirmationPlan(wanted, missing, order, len(front), left_out, raced)


def contested(front: list[Configuration], objectives: list[str], noise: Noise) -> list[Configuration]:
    """Front members whose lead in accuracy over the next cheaper member is not resolved by the
    noise (all but the cheapest, when the noise is not measured): their place on the front rests
    on a difference the runs so far cannot tell from luck: within each run of members the report
    calls not resolved from each other, all but its cheapest."""
    return [m for group in unresolved_groups(front, objectives, noise) for m in group[1:]]
