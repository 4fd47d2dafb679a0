"""What a search says when it ends, and records in ``run.json``: the study's noise, how far its
front is confirmed, and the baselines' verdicts, in a few lines read from the storage."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import optuna

from search.reporting.configurations import Noise, front_configurations, group_configurations, measure_noise
from search.reporting.resolution import (
    MAX_NAMED,
    baseline_name,
    baseline_verdicts,
    group_names,
    runs_wanted,
    unresolved_groups,
)
from search.storage import load_records, study_objectives

__all__ = ["StudySummary", "study_summary"]


@dataclass(frozen=True)
class StudySummary:
    lines: list[str]
    noise: Noise
    front: list[dict[str, Any]]  # number, runs, accuracy (mean), accuracy_sd, mflops

    def to_json(self) -> dict[str, Any]:
        return {"noise": self.noise.to_json(), "front": self.front}


def study_summary(study: optuna.Study) -> StudySummary:
    records = load_records(study)
    objectives = study_objectives(study)
    configs = group_configurations(records, objectives)
    front = front_configurations(configs, objectives)
    noise = measure_noise(configs)
    confirm = study.user_attrs.get("confirm")
    confirm = confirm if isinstance(confirm, int) else None
    wanted = runs_wanted(confirm)
    lines = [f"noise: {noise.describe()}"]
    confirmed = sum(1 for c in front if wanted > 1 and c.runs_count >= wanted)
    counts = [c.runs_count for c in sorted(front, key=lambda c: c.mflops)]
    if len(counts) <= MAX_NAMED:
        runs = ", ".join(map(str, counts)) + " runs, cheapest first"
    else:  # a large front: how many have each number of runs
        runs = ", ".join(f"{k} with {n} run{'s' if n != 1 else ''}" for n, k in sorted(Counter(counts).items()))
    lines.append(
        f"front: {len(front)} configurations on their means ({runs}); "
        + (f"{confirmed} confirmed with {wanted}+ runs" if wanted > 1 else "single runs (--confirm 0)")
    )
    groups = unresolved_groups(front, objectives, noise) if noise.measured else []
    if groups:
        lines.append(
            "not resolved from each other: "
            + "; ".join(", ".join(group_names(g)) for g in groups)
            + " (see the report's 'What the noise resolves')"
        )
    verdicts = baseline_verdicts(configs, objectives, noise, confirm)
    beaten = [v for v in verdicts if v.beaten_by is not None]
    if verdicts:
        lines.append(
            f"baselines: {len(beaten)} of {len(verdicts)} beaten beyond the noise by a confirmed per-layer configuration"
            + (f" ({', '.join(baseline_name(v.baseline) for v in beaten)})" if beaten else "")
        )
    front_json = [
        {
            "number": c.number,
            "runs": c.runs_count,
            "accuracy": c.accuracy,
            "accuracy_sd": c.accuracy_sd,
            "mflops": c.mflops,
        }
        for c in front
    ]
    return StudySummary(lines, noise, front_json)
