"""What a report shows, read once from the study's storage: the records, the front, the
hypervolume and, for a one-shot study, the trials of its linked study that retrained its
configurations."""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from search.compat import study_storage
from search.objectives import OBJECTIVES
from search.reporting.configurations import (
    Configuration,
    Noise,
    front_configurations,
    group_configurations,
    measure_noise,
)
from search.reporting.front import front_hypervolume
from search.storage import TrialRecord, load_records, study_objectives

__all__ = ["ReportData", "read_report_data"]


@dataclass(frozen=True)
class ReportData:
    """Everything the figures and the page are drawn from."""

    study: optuna.Study
    records: list[TrialRecord]
    objectives: list[str]
    reference: dict[str, float]  # the recorded reference point (numbers only)
    configs: list[Configuration]  # every configuration with a run, on its means
    front_configs: list[Configuration]  # the front of those means
    noise: Noise  # the study's seed-to-seed noise of accuracy
    confirm: int | None  # the --confirm of the study's last run (None: not recorded)
    hv_objectives: list[str]  # the objectives the hypervolume is over (empty: none)
    hv: float | None
    hv_norm: float | None  # hypervolume / box between the reference and the ideal point
    retrained: list[TrialRecord] | None  # None: not a one-shot study

    @property
    def front(self) -> list[TrialRecord]:
        """The front as records: each configuration's first run with its mean values."""
        return [c.record for c in self.front_configs]


def _hv_objectives(objectives: list[str], reference: dict[str, float]) -> list[str]:
    """Objectives with a reference value (latency has none: it is left out of the hypervolume)."""
    return [o for o in objectives if o in reference and o in OBJECTIVES]


def _hv_box(objectives: list[str], reference: dict[str, float]) -> float | None:
    """Volume of the box between the reference point and the ideal point (accuracy 1, costs 0)."""
    volume = 1.0
    for o in objectives:
        objective = OBJECTIVES[o]
        side = objective.ideal - reference[o] if objective.sense == "max" else reference[o] - objective.ideal
        if side <= 0:
            return None
        volume *= side
    return volume


def _retrained_records(study: optuna.Study) -> list[TrialRecord] | None:
    """For a one-shot study, the stand-alone trials that retrained its configurations."""
    name = study.user_attrs.get("retrained_study")
    if not name:
        return None
    try:
        linked = optuna.load_study(study_name=name, storage=study_storage(study))
    except KeyError:
        return []
    return [r for r in load_records(linked) if r.user_attrs.get("from_one_shot") is not None]


def read_report_data(study: optuna.Study) -> ReportData:
    """The study's records and what the report derives from them."""
    records = load_records(study)
    objectives = study_objectives(study)
    reference = {
        k: float(v)
        for k, v in dict(study.user_attrs.get("reference_point") or {}).items()
        if isinstance(v, (int, float))
    }
    configs = group_configurations(records, objectives)
    hv_objectives = _hv_objectives(objectives, reference)
    hv = hv_norm = None
    if hv_objectives:
        hv = front_hypervolume(records, hv_objectives, reference)
        box = _hv_box(hv_objectives, reference)
        hv_norm = hv / box if box else None
    return ReportData(
        study=study,
        records=records,
        objectives=objectives,
        reference=reference,
        configs=configs,
        front_configs=front_configurations(configs, objectives),
        noise=measure_noise(configs),
        confirm=study.user_attrs.get("confirm") if isinstance(study.user_attrs.get("confirm"), int) else None,
        hv_objectives=hv_objectives,
        hv=hv,
        hv_norm=hv_norm,
        retrained=_retrained_records(study),
    )
