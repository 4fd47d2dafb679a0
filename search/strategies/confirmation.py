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

The rule is a pure function of the study's runs and of the repeats already queued or running,
so any number of workers (and the Ray driver) can ask it under the budget lock and share the
work without repeating any of it.

Example:
    >>> plan = ConfirmationPlan(3, {7: 2, 4: 1}, [7, 4], 2, 0)
    >>> plan.next, plan.remaining
    (7, 3)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from search.reporting.configurations import (
    Configuration,
    confirmation_candidates,
    group_configurations,
    measure_noise,
)
from search.storage import TrialRecord

__all__ = ["ConfirmationPlan", "plan_confirmation", "plan_for"]


@dataclass(frozen=True)
class ConfirmationPlan:
    """What confirmation still has to train: ``missing`` runs per configuration number (after
    the repeats already queued or running), in the order to train them."""

    runs_wanted: int  # R + 1
    missing: dict[int, int]
    order: list[int]
    front_size: int
    left_out: int  # configurations within the noise of the front beyond the cap: not confirmed

    @property
    def next(self) -> int | None:
        """The configuration to repeat next (None: nothing left to queue)."""
        return self.order[0] if self.order else None

    @property
    def remaining(self) -> int:
        return sum(self.missing.values())


def plan_confirmation(
    records: list[TrialRecord], objectives: list[str], repeats: int, pending: Mapping[int, int]
) -> ConfirmationPlan:
    """The runs still missing for every front member (and every configuration within its
    noise) to have ``repeats + 1`` runs, given ``pending`` repeats (configuration number ->
    repeats queued or running). Front members come first, those with the fewest runs first."""
    return plan_for(group_configurations(records, objectives), objectives, repeats, pending)


def plan_for(
    configs: list[Configuration], objectives: list[str], repeats: int, pending: Mapping[int, int]
) -> ConfirmationPlan:
    """:func:`plan_confirmation` of the configurations ``configs`` (grouped already: a running
    search keeps them up to date as its trials finish)."""
    wanted = repeats + 1
    front, close, left_out = confirmation_candidates(configs, objectives, measure_noise(configs))
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
    return ConfirmationPlan(wanted, missing, order, len(front), left_out)
