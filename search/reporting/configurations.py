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

import bisect
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from search.objectives import OBJECTIVE_SENSES
from search.reporting.pareto import pareto_mask
from search.storage import TrialRecord

__all__ = [
    "RESOLVE_Z",
    "Comparison",
    "Configuration",
    "ConfigurationTally",
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
    return record.config


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
    def mflops(self) -> float:
        """Its MFLOPs (the same for every run): recorded with each trial, an objective or not."""
        cost = self.record.mflops if self.record.mflops is not None else self.record.values.get("mflops")
        return float(cost) if cost is not None else 0.0

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
    tally = ConfigurationTally(objectives)
    for r in sorted(records, key=lambda rec: rec.number):
        tally.add(r)
    return tally.configurations()


def _number(record: TrialRecord) -> int:
    return record.number


class ConfigurationTally:
    """The configurations of runs given one at a time, in any order (:func:`group_configurations`
    gives them all at once): a running search adds each trial as it finishes, so that the
    progress line and the confirmation plan never group the whole study again. A configuration
    is rebuilt only when it gets a run; means are summed over its runs by number, exactly as
    :func:`group_configurations` always did."""

    def __init__(self, objectives: list[str]) -> None:
        self.objectives = list(objectives)
        self._runs: dict[str, list[TrialRecord]] = {}  # configuration key -> its runs, by number
        self._order: list[tuple[int, str]] = []  # (first run's number, key), sorted
        self._built: dict[str, Configuration] = {}
        self._listed: list[Configuration] | None = None

    def add(self, record: TrialRecord) -> ConfigurationTally:
        """Count ``record`` if it is a run (feasible, complete); returns the tally."""
        if not record.feasible_complete:
            return self
        key = config_key(record)
        key = key if key is not None else f"#{record.number}"
        runs = self._runs.get(key)
        if runs is None:
            self._runs[key] = [record]
            bisect.insort(self._order, (record.number, key))
        else:
            first = runs[0].number
            bisect.insort(runs, record, key=_number)
            if runs[0].number != first:  # an earlier run finished later: it names the configuration
                self._order.remove((first, key))
                bisect.insort(self._order, (record.number, key))
        self._built.pop(key, None)
        self._listed = None
        return self

    def _build(self, key: str) -> Configuration:
        runs = self._runs[key]
        means = {o: sum(float(r.values[o]) for r in runs) / len(runs) for o in self.objectives}
        built = self._built[key] = Configuration(replace(runs[0], values=means), tuple(runs))
        return built

    def configurations(self) -> list[Configuration]:
        """Every configuration with a run, by the number of its first run."""
        if self._listed is None:
            self._listed = [self._built.get(key) or self._build(key) for _, key in self._order]
        return list(self._listed)


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


# Configurations compared with the front at once in :func:`_gaps` (bounds its memory).
_GAP_BLOCK = 2048


def _gaps(configs: list[Configuration], front: list[Configuration], objectives: list[str], noise: Noise) -> np.ndarray:
    """For each configuration off the front, how far it lies below the front members that
    dominate it on the means, in standard errors of the difference (the largest such gap, 0
    when none does); infinite when one of them dominates it beyond the noise (or the noise is
    exactly 0). :func:`compare` of every pair, as arrays: a study of thousands of
    configurations and a front of hundreds is millions of pairs."""
    assert noise.sd is not None
    costs = [o for o in objectives if o != "accuracy"]
    signs = np.array([-1.0 if OBJECTIVE_SENSES[o] == "max" else 1.0 for o in costs])

    def arrays(group: list[Configuration]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        accuracy = np.array([c.accuracy for c in group], dtype=float)
        runs = np.array([c.runs_count for c in group], dtype=float)
        spent = np.array([[float(c.record.values[o]) for o in costs] for c in group], dtype=float)
        return accuracy, runs, spent.reshape(len(group), len(costs)) * signs

    front_accuracy, front_runs, front_costs = arrays(front)
    gaps = np.zeros(len(configs))
    for start in range(0, len(configs), _GAP_BLOCK):
        accuracy, runs, spent = arrays(configs[start : start + _GAP_BLOCK])
        difference = accuracy[:, None] - front_accuracy[None, :]
        cheaper = np.any(spent[:, None, :] < front_costs[None, :, :], axis=2)
        dominating = ~cheaper & ~(difference > 0)  # the members that dominate it on the means
        error = noise.sd * np.sqrt(1 / runs[:, None] + 1 / front_runs[None, :])
        beyond = (np.abs(difference) > RESOLVE_Z * error) & (difference < 0)
        infinite = np.any(dominating & (beyond | (error == 0)), axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(dominating & (error != 0), -difference / error, 0.0)
        block = np.maximum(0.0, ratio.max(axis=1, initial=0.0))
        gaps[start : start + len(block)] = np.where(infinite, math.inf, block)
    return gaps


def confirmation_candidates(
    configs: list[Configuration], objectives: list[str], noise: Noise
) -> tuple[list[Configuration], list[Configuration], int]:
    """The front (on means), the configurations within its noise to confirm with it (closest
    first, at most as many as the front has members), and how many more within the noise
    were left out. Without a measured noise nothing beyond the front is known to be close."""
    front = front_configurations(configs, objectives)
    on_front = {c.number for c in front}
    close: list[tuple[float, int, Configuration]] = []
    if noise.measured and front:
        off = [c for c in configs if c.number not in on_front]
        for c, gap in zip(off, _gaps(off, front, objectives, noise).tolist()):
            if math.isfinite(gap):
                close.append((gap, c.number, c))
    close.sort(key=lambda item: (item[0], item[1]))
    kept = [c for _, _, c in close[: len(front)]]
    return front, kept, len(close) - len(kept)
