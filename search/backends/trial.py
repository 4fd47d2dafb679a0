"""The trial path every backend shares: what an evaluation needs of a run, where a trial's
checkpoint goes, who its early-stopping peers are, and how an :class:`Outcome` becomes a told
Optuna trial (state, attributes, constraint). The Optuna backend, the Ray backend and the
one-shot search all go through here, so a study records the same whichever ran it.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from models import Architecture
from search.compat import set_user_attrs
from search.errors import SearchAborted
from search.evaluation.candidate import EvaluationPlan, Outcome, candidate_attributes, latency_function
from search.evaluation.cost import Cost
from search.evaluation.evaluate import trained_attributes
from search.evaluation.train import EpochRecord
from search.settings import Settings
from search.storage import TrialRecord, trial_index
from search.strategies.early_stopping import RUNG_PREFIX, RungResult, peers_from_attrs
from spaces import SearchSpace

__all__ = [
    "CONSTRAINT_KEY",
    "EPOCH_KEYS",
    "MAX_INFEASIBLE_IN_A_ROW",
    "Streaks",
    "checkpoint_path",
    "evaluation_plan",
    "hyperparameters_of",
    "rung_peers",
    "stopped_outcome",
    "tell_outcome",
]

# The name of the FLOPs-ceiling constraint in Optuna (> 0: over --max-mflops).
CONSTRAINT_KEY = "mflops_over_ceiling"
# Give up when this many candidates in a row are over the FLOPs ceiling.
MAX_INFEASIBLE_IN_A_ROW = 500
# The keys of one epoch of a trial's curve (EpochRecord.to_json).
EPOCH_KEYS = tuple(f.name for f in fields(EpochRecord))


def evaluation_plan(settings: Settings, space: SearchSpace, device: torch.device) -> EvaluationPlan:
    """What evaluating a candidate of ``space`` on ``device`` needs of ``settings``; with the
    latency function when latency is an objective."""
    scoring = settings.scoring
    latency = None
    if "latency_ms" in scoring.objectives:
        tables = Path(settings.results_dir) / "latency_tables"
        latency = latency_function(space, device, scoring.latency, scoring.latency_batch, tables)
    return EvaluationPlan(settings.training, device, scoring.max_mflops, settings.checkpoint_every, latency)


def checkpoint_path(settings: Settings, origin: int) -> Path | None:
    """Where trial ``origin`` saves its training state (None without ``--checkpoint-every``).
    A retry passes its original's number: it resumes the same training."""
    return settings.study_dir / "checkpoints" / f"trial_{origin}.pt" if settings.checkpoint_every else None


def hyperparameters_of(params: dict[str, Any]) -> dict[str, Any]:
    """The ``--tune`` hyperparameters among a trial's parameters (named ``hp_<name>`` there)."""
    return {key[3:]: value for key, value in params.items() if key.startswith("hp_")}


def _rung_carriers(found: list[TrialRecord], record: TrialRecord) -> list[TrialRecord]:
    """Collect the finished trials that recorded a rung and did not fail."""
    if record.state != "FAIL" and any(key.startswith(RUNG_PREFIX) for key in record.user_attrs):
        found.append(record)
    return found


def rung_peers(study: optuna.Study, epoch: int, exclude: int | None = None) -> list[RungResult]:
    """The results the study's trials (but trial ``exclude``) recorded at rung ``epoch``, keyed
    by trial number. Failed trials are no peers: a retry must not compete with its own failed
    original. The finished ones are collected once (:meth:`search.storage.TrialIndex.fold`);
    the running ones are read again each time (they record rungs as they train)."""
    index = trial_index(study)
    candidates = [*index.fold(_rung_carriers, list), *(r for r in index.open() if r.state != "FAIL")]
    trials = [(r.number, r.user_attrs) for r in sorted(candidates, key=lambda r: r.number) if r.number != exclude]
    return peers_from_attrs(trials, epoch)


def stopped_outcome(
    number: int,
    arch: Architecture,
    reports: list[dict[str, Any]],
    seed: int,
    hyperparameters: dict[str, Any],
    rung: int,
) -> Outcome:
    """The outcome of trial ``number``, stopped at ``rung`` from outside (the Ray scheduler), so
    that it never returned one: rebuilt from its per-epoch reports (each an epoch record with
    the candidate's costs and ``accuracy``)."""
    last = reports[-1]
    cost = Cost(last["mflops"], last["mflops_all_ops"], int(last["params"]))
    curve = [{key: report[key] for key in EPOCH_KEYS} for report in reports]
    seconds = sum(float(report["seconds"]) for report in reports)
    attrs = {
        **candidate_attributes(arch, seed, hyperparameters),
        **trained_attributes(cost, curve, seconds, stopped_early=True),
        "stopped_at_rung": rung,
    }
    line = f"trial {number}: stopped at rung {rung} (acc {last['accuracy']:.4f} @ {cost.mflops:.2f} MFLOPs)"
    return Outcome("early_stopped", None, attrs, None, line)


def tell_outcome(
    study: optuna.Study, trial: optuna.Trial, outcome: Outcome, objectives: tuple[str, ...], with_constraint: bool
) -> None:
    """Write an outcome's attributes (and FLOPs constraint) into the running ``trial`` and tell
    the study: complete and infeasible trials with their objective values, early-stopped ones
    PRUNED, failed ones FAIL. The constraint is set on every trial of a study with a ceiling
    (``with_constraint``), since samplers (GP) want the same constraints on all trials."""
    set_user_attrs(study, trial, outcome.attrs)  # in one transaction
    if with_constraint and outcome.constraint is not None:
        trial.set_constraint(CONSTRAINT_KEY, outcome.constraint)
    if outcome.state in ("complete", "infeasible"):
        study.tell(trial, outcome.objective_values(objectives))
    else:
        study.tell(trial, state=TrialState.PRUNED if outcome.state == "early_stopped" else TrialState.FAIL)


class Streaks:
    """Failed and infeasible trials in a row, for a driver that asks trials one by one: past
    ``max_failures`` failures (or ``max_infeasible`` candidates over the FLOPs ceiling, unless
    None) in a row the search stops, since it would only go on failing."""

    def __init__(
        self, max_failures: int, max_mflops: float | None, max_infeasible: int | None = MAX_INFEASIBLE_IN_A_ROW
    ) -> None:
        self.max_failures, self.max_mflops, self.max_infeasible = max_failures, max_mflops, max_infeasible
        self.failures = self.infeasible = 0

    def count(self, outcome: Outcome) -> None:
        """Count one told outcome; raises :class:`SearchAborted` past a limit."""
        if outcome.state == "failed":
            self.failures += 1
            if self.failures >= self.max_failures:
                raise SearchAborted(
                    f"{self.failures} trials in a row failed (last: {outcome.attrs.get('fail_reason')}); "
                    "the study is kept, fix the cause and run the same command again"
                )
            return
        self.failures = 0
        if outcome.state == "infeasible":
            self.infeasible += 1
            if self.max_infeasible is not None and self.infeasible >= self.max_infeasible:
                raise SearchAborted(
                    f"{self.max_infeasible} candidates in a row were over --max-mflops {self.max_mflops}; "
                    "raise the ceiling"
                )
            return
        self.infeasible = 0
