"""The Pareto front of a study's records, and its hypervolume: shared by the progress line,
the report and the export so that all three agree on what is on the front."""

from __future__ import annotations

import numpy as np

from search.reporting.pareto import hypervolume, hypervolume_history, pareto_mask
from search.storage import OBJECTIVE_SENSES, TrialRecord, load_records, study_objectives

__all__ = ["front_hypervolume", "front_summary", "hypervolume_over_trials", "objective_matrix", "pareto_records"]


def objective_matrix(records: list[TrialRecord], objectives: list[str]) -> np.ndarray:
    return np.array([[r.values[o] for o in objectives] for r in records], dtype=float).reshape(
        len(records), len(objectives)
    )


def pareto_records(records: list[TrialRecord], objectives: list[str]) -> list[TrialRecord]:
    """Non-dominated records among the complete, feasible, full-fidelity ones, by trial number."""
    candidates = [r for r in records if r.feasible_complete]
    if not candidates:
        return []
    mask = pareto_mask(objective_matrix(candidates, objectives), [OBJECTIVE_SENSES[o] for o in objectives])
    return [r for r, keep in zip(candidates, mask) if keep]


def _reference(reference: dict[str, float], objectives: list[str]) -> list[float]:
    return [reference[o] for o in objectives]


def front_hypervolume(records: list[TrialRecord], objectives: list[str], reference: dict[str, float]) -> float:
    candidates = [r for r in records if r.feasible_complete]
    senses = [OBJECTIVE_SENSES[o] for o in objectives]
    return hypervolume(objective_matrix(candidates, objectives), senses, _reference(reference, objectives))


def hypervolume_over_trials(
    records: list[TrialRecord], objectives: list[str], reference: dict[str, float]
) -> tuple[list[TrialRecord], np.ndarray]:
    """Feasible complete records in order of completion, and the hypervolume after each."""
    candidates = sorted(
        (r for r in records if r.feasible_complete),
        key=lambda r: (r.datetime_complete is None, r.datetime_complete, r.number),
    )
    senses = [OBJECTIVE_SENSES[o] for o in objectives]
    history = hypervolume_history(objective_matrix(candidates, objectives), senses, _reference(reference, objectives))
    return candidates, history


def front_summary(study) -> tuple[int, float | None]:
    """Size of the current front and the best validation accuracy (for progress lines)."""
    records = load_records(study)
    best = max((r.values["accuracy"] for r in records if r.feasible_complete), default=None)
    return len(pareto_records(records, study_objectives(study))), best
