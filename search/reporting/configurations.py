"""Configurations and their runs: every accuracy is one draw of a noisy measurement.

A *configuration* is what a trial trains: its architecture and its ``--tune``
hyperparameters. A study may hold several *runs* of one configuration (trained with different
seeds): the repeats ``--confirm`` queues, the baselines, and candidates the sampler proposed
again. Fronts, hypervolumes, reports and exports are computed on each configuration's
**mean** over its runs, never on a lucky single run, and the study's seed-to-seed noise is
measured from the configurations that have more than one run.

Two configurations are *resolved* when their accuracies differ by more than
:data:`RESOLVE_Z` standard errors of the difference of their means, the error taken from the
study's pooled seed-to-seed sd: ``|mean_a - mean_b| > z * sd * sqrt(1/n_a + 1/n_b)``.
Costs (MFLOPs, parameters) are counted, not measured, and carry no noise.

Example:
    >>> from search.storage import TrialRecord
    >>> def run(number, accuracy):
    ...     return TrialRecord(
    ...         number=number, state="COMPLETE", status="ok", values={"accuracy": accuracy, "mflops": 5.0},
    ...         architecture=None, mflops=5.0, mflops_all_ops=5.0, params=100, curve=[], train_seconds=None,
    ...         device=None, seed=number, baseline=None, hyperparameters={}, fail_reason=None,
    ...         datetime_start=None, datetime_complete=None, epochs_run=None,
    ...         user_attrs={"architecture": {"model": "vgg16"}})
    >>> configs = group_configurations([run(0, 0.90), run(1, 0.92)], ["accuracy", "mflops"])
    >>> len(configs), configs[0].runs_count, round(configs[0].accuracy, 3)
    (1, 2, 0.91)
    >>> measure_noise(configs).describe()
    'seed-to-seed sd 1.41 points, from 1 configuration trained 2 times'
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

from search.objectives import OBJECTIVE_SENSES
from search.reporting.pareto import pareto_mask
from search.storage import TrialRecord

__all__ = [
    "RESOLVE_Z",
    "Comparison",
    "Configuration",
    "Noise",
    "compare",
    "config_key",
    "config_numbers",
    "confirmation_candidates",
    "front_configurations",
    "group_configurations",
    "measure_noise",
]

# Two means are resolved when they differ by more than this many standard errors of their
# difference (about 95 % two-sided for a normal noise of known sd).
RESOLVE_Z = 2.0


def config_key(record: TrialRecord) -> str | None:
    """What identifies the configuration a trial ran: its architecture and hyperparameters, as
    canonical JSON (None for a trial that never had an architecture, e.g. still queued)."""
    arch = record.user_attrs.get("architecture")
    if arch is None:
        return None
    return json.dumps({"architecture": arch, "hyperparameters": record.hyperparameters}, sort_keys=True)


def config_numbers(records: list[TrialRecord]) -> dict[int, int]:
    """Trial number -> the number of its configuration: the configuration's first feasible
    complete run, or its first trial when it has no such run yet. Queued repeats
    (``repeat_of``) belong to the configuration they repeat."""
    first_run: dict[str, int] = {}
    first_trial: dict[str, int] = {}
    keys: dict[int, str] = {}
    for r in sorted(records, key=lambda rec: rec.number):
        key = config_key(r)
        if key is None:
            continue
        keys[r.number] = key
        first_trial.setdefault(key, r.number)
        if r.feasible_complete:
            first_run.setdefault(key, r.number)
    numbers = {n: first_run.get(k, first_trial[k]) for n, k in keys.items()}
    for r in records:
        if r.number not in numbers and isinstance(r.user_attrs.get("repeat_of"), int):
            numbers[r.number] = int(r.user_attrs["repeat_of"])
    return numbers


@dataclass(frozen=True)
class Configuration:
    """One configuration and its feasible complete runs (by trial number). ``record`` is its
    first run with every objective replaced by the mean over the runs: what fronts, tables
    and exports show of it."""

    record: TrialRecord
    runs: tuple[TrialRecord, ...]

    @property
    def number(self) -> int:
        """Its name in reports and exports: the trial number of its first run."""
        return self.record.number

    @property
    def runs_count(self) -> int:
        return len(self.runs)

    @property
    def accuracy(self) -> float:
        return float(self.record.values["accuracy"])

    @property
    def accuracy_sd(self) -> float | None:
        """The sample sd of its own runs' accuracies (None with a single run)."""
        return _sd([float(r.values["accuracy"]) for r in self.runs])

    @property
    def baseline(self) -> str | None:
        return next((r.baseline for r in self.runs if r.baseline is not None), None)

    def costs(self, objectives: list[str]) -> dict[str, float]:
        """Its mean value of every objective but accuracy."""
        return {o: float(self.record.values[o]) for o in objectives if o != "accuracy"}

    def runs_json(self) -> list[dict[str, Any]]:
        """Every run as ``{"trial", "seed", "accuracy"}``, for exports."""
        return [{"trial": r.number, "seed": r.seed, "accuracy": float(r.values["accuracy"])} for r in self.runs]


def _sd(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def group_configurations(records: list[TrialRecord], objectives: list[str]) -> list[Configuration]:
    """The configurations with at least one feasible complete run, by the number of their
    first run; each objective averaged over the runs."""
    groups: dict[str, list[TrialRecord]] = {}
    for r in sorted(records, key=lambda rec: rec.number):
        if r.feasible_complete:
            key = config_key(r)
            groups.setdefault(key if key is not None else f"#{r.number}", []).append(r)
    configs = []
    for runs in groups.values():
        means = {o: sum(float(r.values[o]) for r in runs) / len(runs) for o in objectives}
        configs.append(Configuration(replace(runs[0], values=means), tuple(runs)))
    return configs


def front_configurations(configs: list[Configuration], objectives: list[str]) -> list[Configuration]:
    """The configurations non-dominated on their means, by number."""
    if not configs:
        return []
    points = [[c.record.values[o] for o in objectives] for c in configs]
    mask = pareto_mask(points, [OBJECTIVE_SENSES[o] for o in objectives])
    return [c for c, keep in zip(configs, mask) if keep]


@dataclass(frozen=True)
class Noise:
    """The study's seed-to-seed noise of accuracy: the pooled within-configuration sd over the
    configurations with at least two runs (None: not measured, no configuration ran twice)."""

    sd: float | None
    configurations: int  # configurations with two or more runs
    runs: int  # their runs together
    fewest_runs: int
    most_runs: int

    @property
    def measured(self) -> bool:
        return self.sd is not None

    def describe(self) -> str:
        """``seed-to-seed sd 0.62 points, from 9 configurations trained 3 times``."""
        if self.sd is None:
            return "seed-to-seed noise not measured (no configuration was trained more than once)"
        times = (
            f"{self.fewest_runs} times"
            if self.fewest_runs == self.most_runs
            else f"{self.fewest_runs}-{self.most_runs} times, {self.runs} runs"
        )
        plural = "s" if self.configurations != 1 else ""
        return f"seed-to-seed sd {100 * self.sd:.2f} points, from {self.configurations} configuration{plural} trained {times}"

    def to_json(self) -> dict[str, Any]:
        return {
            "accuracy_sd": self.sd,
            "configurations": self.configurations,
            "runs": self.runs,
            "text": self.describe(),
        }


def measure_noise(configs: list[Configuration]) -> Noise:
    """Pool the squared deviations of every configuration with several runs around its own
    mean: ``sd = sqrt(sum (x - mean_c)^2 / sum (n_c - 1))``."""
    repeated = [c for c in configs if c.runs_count >= 2]
    if not repeated:
        return Noise(None, 0, 0, 0, 0)
    squares = freedom = 0.0
    for c in repeated:
        accuracies = [float(r.values["accuracy"]) for r in c.runs]
        mean = sum(accuracies) / len(accuracies)
        squares += sum((a - mean) ** 2 for a in accuracies)
        freedom += len(accuracies) - 1
    counts = [c.runs_count for c in repeated]
    return Noise(math.sqrt(squares / freedom), len(repeated), sum(counts), min(counts), max(counts))


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b``: the difference of their mean accuracies, its standard error
    (None: noise not measured) and whether it is resolved; and whether ``a`` costs no more
    than ``b`` in every cost objective (``cheaper``: strictly less in at least one)."""

    difference: float
    standard_error: float | None
    no_costlier: bool
    cheaper: bool

    @property
    def resolved(self) -> bool:
        """Whether the accuracies differ beyond the noise (never, when it is not measured)."""
        return self.standard_error is not None and abs(self.difference) > RESOLVE_Z * self.standard_error

    @property
    def dominates_beyond_noise(self) -> bool:
        """``a`` costs no more and is more accurate beyond the noise."""
        return self.no_costlier and self.resolved and self.difference > 0

    @property
    def dominated_beyond_noise(self) -> bool:
        """``a`` costs no less and is less accurate beyond the noise (so ``b`` dominates it)."""
        return self.resolved and self.difference < 0 and not self.cheaper


def compare(a: Configuration, b: Configuration, objectives: list[str], noise: Noise) -> Comparison:
    """Compare configuration ``a`` with ``b`` (see :class:`Comparison`)."""
    difference = a.accuracy - b.accuracy
    error = None if noise.sd is None else noise.sd * math.sqrt(1 / a.runs_count + 1 / b.runs_count)
    mine, theirs = a.costs(objectives), b.costs(objectives)
    no_costlier = all(_no_worse(mine[o], theirs[o], o) for o in mine)
    cheaper = any(_no_worse(mine[o], theirs[o], o) and mine[o] != theirs[o] for o in mine)
    return Comparison(difference, error, no_costlier, cheaper)


def _no_worse(mine: float, theirs: float, objective: str) -> bool:
    return mine >= theirs if OBJECTIVE_SENSES[objective] == "max" else mine <= theirs


def _gap(config: Configuration, front: list[Configuration], objectives: list[str], noise: Noise) -> float:
    """How far a configuration off the front lies below the front members that dominate it on
    the means, in standard errors of the difference (the largest such gap); infinite when one
    of them dominates it beyond the noise."""
    gap = 0.0
    for member in front:
        comparison = compare(config, member, objectives, noise)
        if comparison.cheaper or comparison.difference > 0:
            continue  # this member does not dominate it
        if comparison.dominated_beyond_noise or not comparison.standard_error:
            return math.inf
        gap = max(gap, -comparison.difference / comparison.standard_error)
    return gap


def confirmation_candidates(
    configs: list[Configuration], objectives: list[str], noise: Noise
) -> tuple[list[Configuration], list[Configuration], int]:
    """The front (on means), the configurations within its noise to confirm with it (closest
    first, at most as many as the front has members), and how many more within the noise
    were left out. Without a measured noise nothing beyond the front is known to be close."""
    front = front_configurations(configs, objectives)
    on_front = {c.number for c in front}
    close: list[tuple[float, int, Configuration]] = []
    if noise.measured:
        for c in configs:
            if c.number not in on_front:
                gap = _gap(c, front, objectives, noise)
                if math.isfinite(gap):
                    close.append((gap, c.number, c))
    close.sort(key=lambda item: (item[0], item[1]))
    kept = [c for _, _, c in close[: len(front)]]
    return front, kept, len(close) - len(kept)
