"""One candidate, start to finish, the same for every backend: count its cost, reject it if it
is over the FLOPs ceiling, otherwise train and measure it, and say what the trial records.

Backends only move an :class:`Outcome` into their trial (Optuna in-process; Ray through the
trial's final report to the driver), so neither re-implements counting, training or the
attributes a trial records.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models import Architecture
from search.evaluation.cost import architecture_cost
from search.evaluation.evaluate import evaluate, release_memory, result_attributes
from search.evaluation.train import EpochRecord, TrialFailed
from search.settings import Settings
from spaces import SearchSpace

# Called after every epoch with the epoch and the candidate's costs; True stops the training.
CostedEpochCallback = Callable[[EpochRecord, dict[str, float]], bool | None]

__all__ = [
    "CONSTRAINT_KEY",
    "CostedEpochCallback",
    "Outcome",
    "evaluate_candidate",
    "latency_function",
    "record_outcome",
]

CONSTRAINT_KEY = "mflops_over_ceiling"


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


def record_outcome(trial: Any, outcome: Outcome, with_constraint: bool) -> None:
    """Write an outcome's attributes (and FLOPs constraint) into a running Optuna trial. The
    constraint is set on every trial of a study with a ceiling, since samplers (GP) want the
    same constraints on all trials."""
    for key, value in outcome.attrs.items():
        trial.set_user_attr(key, value)
    if with_constraint and outcome.constraint is not None:
        trial.set_constraint(CONSTRAINT_KEY, outcome.constraint)


def evaluate_candidate(
    arch: Architecture,
    hyperparameters: dict[str, Any],
    settings: Settings,
    seed: int,
    number: int,
    on_epoch: CostedEpochCallback | None = None,
    checkpoint: Path | None = None,
    latency: Callable[[Architecture], float] | None = None,
) -> Outcome:
    """Evaluate trial ``number``'s candidate; never raises for a failure of the trial itself
    (only KeyboardInterrupt and the like pass through). ``on_epoch(record, costs)`` gets the
    candidate's cost objectives (``mflops``, ``params``, ``latency_ms`` when measured) with
    every epoch, the values the trial will record (latency is measured once)."""
    attrs: dict[str, Any] = {"architecture": arch.to_json(), "seed": seed}
    if hyperparameters:
        attrs["hyperparameters"] = hyperparameters
    failure: tuple[str, dict[str, Any]] | None = None
    try:
        cost = architecture_cost(arch)
        costs = {"mflops": cost.mflops, "params": float(cost.params)}
        if latency is not None:  # known before training: latency does not depend on the weights
            costs["latency_ms"] = latency(arch)
            attrs["latency_ms"] = costs["latency_ms"]
        constraint = None if settings.max_mflops is None else cost.mflops - settings.max_mflops
        if constraint is not None and constraint > 0:
            attrs.update(
                status="infeasible", mflops=cost.mflops, mflops_all_ops=cost.mflops_all_ops, params=cost.params
            )
            # Never trained: accuracy 0 with its real cost, so the sampler learns the region is
            # infeasible (through the constraint) while fronts and budget ignore it.
            values = {"accuracy": 0.0, **costs}
            return Outcome(
                "infeasible",
                values,
                attrs,
                constraint,
                f"trial {number}: {cost.mflops:.2f} MFLOPs over the ceiling, not trained",
            )
        epoch_callback = None if on_epoch is None else (lambda record: on_epoch(record, costs))
        result = evaluate(
            arch,
            settings.training.replace(**hyperparameters),
            seed,
            on_epoch=epoch_callback,
            checkpoint=checkpoint,
            checkpoint_every=settings.checkpoint_every,
        )
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
        attrs.update(status="failed", fail_reason=reason, **extra)
        release_memory()
        return Outcome("failed", None, attrs, None, f"trial {number}: failed ({reason})")
    attrs.update(result_attributes(result))
    state = "early_stopped" if result.stopped_early else "complete"
    latency_text = f", {costs['latency_ms']:.2f} ms" if "latency_ms" in costs else ""
    what = f"stopped at epoch {result.epochs_run}, acc" if result.stopped_early else "acc"
    line = f"trial {number}: {what} {result.accuracy:.4f} @ {result.cost.mflops:.2f} MFLOPs{latency_text} in {result.train_seconds:.1f}s"
    return Outcome(state, {**result.metrics(), **costs}, attrs, constraint, line)


def latency_function(settings: Settings, space: SearchSpace) -> Callable[[Architecture], float] | None:
    """How this run gets a candidate's latency (None when latency is not an objective)."""
    if "latency_ms" not in settings.objectives:
        return None
    from search.evaluation.latency import LatencyTable, model_latency_ms
    from search.evaluation.train import resolve_device

    device = resolve_device(settings.training.device)
    batch = settings.latency_batch
    if settings.latency == "table":
        table = LatencyTable.cached(space, device, batch, Path(settings.results_dir) / "latency_tables")
        return lambda arch: table.predict(arch, space.slots)
    return lambda arch: model_latency_ms(arch, device, batch)
