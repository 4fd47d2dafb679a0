"""One candidate, start to finish, the same for every backend and strategy: count its cost,
reject it if it is over the FLOPs ceiling, otherwise measure it (train it, or score it with a
supernet's inherited weights), and say what the trial records.

Backends only move an :class:`Outcome` into their trial (see :mod:`search.backends.trial`:
Optuna in-process; Ray through the trial's final report to the driver), so none of them
re-implements counting, training or the attributes a trial records.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from models import Architecture
from search.evaluation.cost import Cost, architecture_cost
from search.evaluation.evaluate import evaluate, release_memory, result_attributes
from search.evaluation.train import EpochRecord, TrialFailed
from search.settings import TrainingSettings
from spaces import SearchSpace

# Called after every epoch with the epoch and the candidate's costs; True stops the training.
CostedEpochCallback = Callable[[EpochRecord, dict[str, float]], bool | None]
# A candidate's latency in milliseconds (known before training: it does not depend on the weights).
LatencyFunction = Callable[[Architecture], float]

__all__ = [
    "CostedEpochCallback",
    "EvaluationPlan",
    "LatencyFunction",
    "Outcome",
    "candidate_attributes",
    "evaluate_candidate",
    "failed_outcome",
    "latency_function",
    "score_candidate",
]


@dataclass(frozen=True)
class EvaluationPlan:
    """What evaluating a candidate needs of a run: the training recipe, where it runs, and
    the few options of the run that change an evaluation (built from the run's settings by
    :func:`search.backends.trial.evaluation_plan`)."""

    training: TrainingSettings
    device: torch.device
    max_mflops: float | None = None  # FLOPs ceiling: a candidate over it is infeasible, never trained
    checkpoint_every: int = 0  # save training state every K epochs (0: never)
    latency: LatencyFunction | None = None  # when latency is an objective


@dataclass
class Outcome:
    state: str  # "complete", "infeasible", "failed" or "early_stopped"
    values: dict[str, float] | None  # objective name -> value (complete and infeasible)
    attrs: dict[str, Any] = field(default_factory=dict)  # trial user attributes
    constraint: float | None = None  # > 0: infeasible (only with a FLOPs ceiling)
    line: str = ""  # one line for the progress output

    def objective_values(self, objectives: list[str] | tuple[str, ...]) -> list[float]:
        assert self.values is not None
        return [self.values[o] for o in objectives]

    def to_json(self) -> str:
        return json.dumps(
            {
                "state": self.state,
                "values": self.values,
                "attrs": self.attrs,
                "constraint": self.constraint,
                "line": self.line,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Outcome:
        data = json.loads(text)
        return cls(data["state"], data["values"], data["attrs"], data["constraint"], data["line"])


def failed_outcome(number: int, reason: str, attrs: dict[str, Any] | None = None) -> Outcome:
    """Trial ``number`` failed for ``reason``; ``attrs``: what it had recorded before."""
    attrs = {**(attrs or {}), "status": "failed", "fail_reason": reason}
    return Outcome("failed", None, attrs, None, f"trial {number}: failed ({reason})")


def candidate_attributes(arch: Architecture, seed: int, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """What every trained candidate records before training: its architecture, seed and
    (``--tune``) hyperparameters."""
    attrs: dict[str, Any] = {"architecture": arch.to_json(), "seed": seed}
    if hyperparameters:
        attrs["hyperparameters"] = hyperparameters
    return attrs


# Measures a feasible candidate from its cost and cost objectives; what it raises fails the trial.
Measure = Callable[[Cost, dict[str, float]], Outcome]


def _assess(arch: Architecture, attrs: dict[str, Any], plan: EvaluationPlan, number: int, measure: Measure) -> Outcome:
    """Count ``arch``'s cost (and latency), reject it over the FLOPs ceiling, else ``measure``
    it; never raises for a failure of the trial itself (only KeyboardInterrupt and the like
    pass through). ``attrs``: what the trial records whatever happens."""
    failure: tuple[str, dict[str, Any]] | None = None
    try:
        cost = architecture_cost(arch)
        costs = {"mflops": cost.mflops, "params": float(cost.params)}
        if plan.latency is not None:
            costs["latency_ms"] = plan.latency(arch)
            attrs["latency_ms"] = costs["latency_ms"]
        constraint = None if plan.max_mflops is None else cost.mflops - plan.max_mflops
        if constraint is not None and constraint > 0:
            attrs.update(
                status="infeasible", mflops=cost.mflops, mflops_all_ops=cost.mflops_all_ops, params=cost.params
            )
            # Never measured: accuracy 0 with its real cost, so the sampler learns the region is
            # infeasible (through the constraint) while fronts and budget ignore it.
            values = {"accuracy": 0.0, **costs}
            line = f"trial {number}: {cost.mflops:.2f} MFLOPs over the ceiling, not trained"
            return Outcome("infeasible", values, attrs, constraint, line)
        outcome = measure(cost, costs)
    except TrialFailed as err:
        failure = (str(err), {})
    except torch.OutOfMemoryError as err:
        reason = "out of device memory (use a smaller --batch-size, or give each trial more GPU: --gpus-per-trial 1)"
        failure = (reason, {"traceback": str(err).splitlines()[0][:500] if str(err) else ""})
    except Exception as err:  # noqa: BLE001  (one broken trial must not end or corrupt the study)
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:500]
        failure = (reason, {"traceback": traceback.format_exc(limit=8)[-4000:]})
    if failure is not None:
        # Here, after the except block, the exception and the frames it held (the model, its
        # activations) are gone, so freeing memory can really give it back.
        reason, extra = failure
        release_memory()
        return failed_outcome(number, reason, {**attrs, **extra})
    return replace(outcome, constraint=constraint)


def evaluate_candidate(
    arch: Architecture,
    hyperparameters: dict[str, Any],
    plan: EvaluationPlan,
    seed: int,
    number: int,
    on_epoch: CostedEpochCallback | None = None,
    checkpoint: Path | None = None,
) -> Outcome:
    """Train and measure trial ``number``'s candidate (see :func:`_assess`). ``on_epoch(record,
    costs)`` gets the candidate's cost objectives (``mflops``, ``params``, ``latency_ms`` when
    measured) with every epoch, the values the trial will record (latency is measured once)."""
    attrs = candidate_attributes(arch, seed, hyperparameters)

    def train(cost: Cost, costs: dict[str, float]) -> Outcome:
        result = evaluate(
            arch,
            plan.training.replace(**hyperparameters),
            seed,
            on_epoch=None if on_epoch is None else (lambda record: on_epoch(record, costs)),
            checkpoint=checkpoint,
            checkpoint_every=plan.checkpoint_every,
            device=plan.device,
        )
        attrs.update(result_attributes(result))
        state = "early_stopped" if result.stopped_early else "complete"
        latency_text = f", {costs['latency_ms']:.2f} ms" if "latency_ms" in costs else ""
        what = f"stopped at epoch {result.epochs_run}, acc" if result.stopped_early else "acc"
        line = f"trial {number}: {what} {result.accuracy:.4f} @ {result.cost.mflops:.2f} MFLOPs{latency_text} in {result.train_seconds:.1f}s"
        return Outcome(state, {**result.metrics(), **costs}, attrs, None, line)

    return _assess(arch, attrs, plan, number, train)


def score_candidate(
    arch: Architecture,
    plan: EvaluationPlan,
    number: int,
    score: Callable[[Architecture], float],
    attrs: dict[str, Any],
) -> Outcome:
    """Score trial ``number``'s candidate with ``score`` (its accuracy without training it, e.g.
    with a supernet's inherited weights) instead of training it (see :func:`_assess`).
    ``attrs``: what the trial records besides its architecture, costs and score time."""
    recorded = {"architecture": arch.to_json(), **attrs}

    def measure(cost: Cost, costs: dict[str, float]) -> Outcome:
        started = time.perf_counter()
        accuracy = score(arch)
        recorded.update(
            status="ok",
            mflops=cost.mflops,
            mflops_all_ops=cost.mflops_all_ops,
            params=cost.params,
            score_seconds=round(time.perf_counter() - started, 3),
        )
        line = f"trial {number}: score {accuracy:.4f} @ {cost.mflops:.2f} MFLOPs"
        return Outcome("complete", {"accuracy": accuracy, **costs}, recorded, None, line)

    return _assess(arch, recorded, plan, number, measure)


def latency_function(
    space: SearchSpace, device: torch.device, how: str, batch: int, tables_dir: Path
) -> LatencyFunction:
    """How a run gets a candidate's latency on ``device`` at batch size ``batch``: ``how`` is
    ``measured`` (each deployed model timed) or ``table`` (predicted from a per-layer table,
    built once per device under ``tables_dir``)."""
    from search.evaluation.latency import LatencyTable, model_latency_ms

    if how == "table":
        table = LatencyTable.cached(space, device, batch, tables_dir)
        return lambda arch: table.predict(arch, space.slots)
    return lambda arch: model_latency_ms(arch, device, batch)
