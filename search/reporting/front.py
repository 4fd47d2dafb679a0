"""The Pareto front of a study and its hypervolume, on each configuration's mean over its runs
(:mod:`search.reporting.configurations`): shared by the progress line, the report and the
export so that all three agree on what is on the front."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from search.reporting.configurations import (
    Configuration,
    ConfigurationTally,
    Noise,
    config_key,
    front_configurations,
    group_configurations,
    measure_noise,
)
from search.reporting.pareto import hypervolume, pareto_mask, to_minimization
from search.storage import OBJECTIVE_SENSES, TrialIndex, TrialRecord, trial_index

__all__ = [
    "FrontSummary",
    "configurations_in",
    "front_hypervolume",
    "front_summary",
    "hypervolume_over_trials",
    "objective_matrix",
    "pareto_configurations",
    "pareto_records",
    "study_configurations",
]


def objective_matrix(records: list[TrialRecord], objectives: list[str]) -> np.ndarray:
    return np.array([[r.values[o] for o in objectives] for r in records], dtype=float).reshape(
        len(records), len(objectives)
    )


def pareto_configurations(records: list[TrialRecord], objectives: list[str]) -> list[Configuration]:
    """The configurations non-dominated on their means, among the feasible complete runs."""
    return front_configurations(group_configurations(records, objectives), objectives)


def pareto_records(records: list[TrialRecord], objectives: list[str]) -> list[TrialRecord]:
    """The front as records (each configuration's first run, with its mean values), by number."""
    return [c.record for c in pareto_configurations(records, objectives)]


def _reference(reference: dict[str, float], objectives: list[str]) -> list[float]:
    return [reference[o] for o in objectives]


def front_hypervolume(records: list[TrialRecord], objectives: list[str], reference: dict[str, float]) -> float:
    """Hypervolume of the configurations' means."""
    means = [c.record for c in group_configurations(records, objectives)]
    senses = [OBJECTIVE_SENSES[o] for o in objectives]
    return hypervolume(objective_matrix(means, objectives), senses, _reference(reference, objectives))


def hypervolume_over_trials(
    records: list[TrialRecord], objectives: list[str], reference: dict[str, float]
) -> tuple[list[TrialRecord], np.ndarray]:
    """Feasible complete records in order of completion, and the hypervolume of the
    configurations' means after each. A configuration's first run can only add to it; a
    further run moves its mean, so the hypervolume can also fall (a lucky first run corrected)."""
    runs = sorted(
        (r for r in records if r.feasible_complete),
        key=lambda r: (r.datetime_complete is None, r.datetime_complete, r.number),
    )
    senses = [OBJECTIVE_SENSES[o] for o in objectives]
    ref = _reference(reference, objectives)
    ref_min = to_minimization([ref], senses)[0]
    rows: dict[str, int] = {}  # configuration key -> its row in sums and counts, in order of first run
    points = to_minimization([[r.values[o] for o in objectives] for r in runs], senses)
    sums = np.zeros((len(runs), len(objectives)))
    counts = np.zeros(len(runs))
    front = np.empty((0, len(objectives)))  # current non-dominated means, minimization form
    history = np.zeros(len(runs))
    current = 0.0
    for i, r in enumerate(runs):
        key = config_key(r) or f"#{r.number}"
        point = points[i]
        repeat = key in rows
        row = rows.setdefault(key, len(rows))
        sums[row] += point
        counts[row] += 1
        if repeat:  # a mean moved: the front is recomputed from every mean
            means = sums[: len(rows)] / counts[: len(rows), None]
            front = means[pareto_mask(means, ["min"] * len(objectives))]
            current = _hv_min(front, ref_min)
        elif not np.any(np.all(front <= point, axis=1)):
            front = np.vstack([front[~np.all(point <= front, axis=1)], point])
            current = _hv_min(front, ref_min)
        history[i] = current
    return runs, history


def _hv_min(front: np.ndarray, ref_min: np.ndarray) -> float:
    """Hypervolume of points already in minimization form."""
    return hypervolume(front, ["min"] * front.shape[1], ref_min) if len(front) else 0.0


@dataclass(frozen=True)
class FrontSummary:
    """What a progress line says of a study's front: its size, the best mean accuracy and
    the study's noise."""

    size: int
    best: float | None
    noise: Noise
    front_runs: tuple[int, ...] = ()  # the runs of each front member

    def confirmed(self, runs_wanted: int) -> int:
        """Front members with at least ``runs_wanted`` runs."""
        return sum(1 for n in self.front_runs if n >= runs_wanted)


def _tally(tally: ConfigurationTally, record: TrialRecord) -> ConfigurationTally:
    return tally.add(record)


def study_configurations(study) -> list[Configuration]:
    """The configurations of ``study`` (:func:`group_configurations` of its records), kept in
    this process and brought up to date with the trials finished since the last call: a search
    asks after every trial, and grouping thousands of runs each time was most of its cost."""
    return configurations_in(trial_index(study))


def configurations_in(index: TrialIndex) -> list[Configuration]:
    """:func:`study_configurations` of the trials ``index`` has read (no new read)."""
    return index.fold(_tally, lambda: ConfigurationTally(index.objectives)).configurations()


def front_summary(study) -> FrontSummary:
    """Size of the current front, the best mean accuracy and the study's noise."""
    index = trial_index(study)
    configs = configurations_in(index)
    best = max((c.accuracy for c in configs), default=None)
    front = front_configurations(configs, index.objectives)
    return FrontSummary(len(front), best, measure_noise(configs), tuple(c.runs_count for c in front))
