"""The one evaluation path every backend calls: architecture -> model -> cost -> training -> metrics."""

from __future__ import annotations

import contextlib
import functools
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models import Architecture, build_model
from search.evaluation.cost import Cost, architecture_cost, count_cost, learns_its_cost
from search.evaluation.data import Dataset, load_dataset
from search.evaluation.train import EpochCallback, EpochRecord, train_model
from search.settings import TrainingSettings, resolve_device

__all__ = [
    "TrialResult",
    "evaluate",
    "frozen_between_trials",
    "get_dataset",
    "out_of_memory",
    "out_of_memory_line",
    "release_memory",
    "result_attributes",
    "trained_attributes",
]


@dataclass
class TrialResult:
    """What one trained candidate measured. ``accuracy`` is the validation accuracy after the
    last epoch (not the best epoch: picking the best epoch on the validation split would bias
    the objective upwards)."""

    architecture: Architecture
    accuracy: float
    val_loss: float
    cost: Cost
    curve: list[EpochRecord]
    train_seconds: float
    device: str
    seed: int
    epochs_run: int
    stopped_early: bool = False

    def metrics(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "mflops": self.cost.mflops, "params": float(self.cost.params)}


@functools.lru_cache(maxsize=2)
def _cached_dataset(name: str, data_dir: str, val_size: int | None, split_seed: int, full_train: bool) -> Dataset:
    return load_dataset(name, data_dir, val_size=val_size, split_seed=split_seed, full_train=full_train)


def get_dataset(training: TrainingSettings, full_train: bool = False) -> Dataset:
    """The data set of ``training``, loaded once per process (trials of a study share it)."""
    return _cached_dataset(training.dataset, str(training.data_dir), training.val_size, training.split_seed, full_train)


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says a device ran out of memory: CUDA's own error, or the CPU
    allocator's RuntimeError ("DefaultCPUAllocator: can't allocate memory")."""
    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError) and "allocate" in str(err))


def out_of_memory_line(option: str, value: int, doing: str, err: BaseException) -> str:
    """The one-line error for ``doing`` run out of memory at ``option value``."""
    return f"{option} {value}: {doing} ran out of memory ({str(err).splitlines()[0][:120]}); use a smaller {option}"


# How many :func:`frozen_between_trials` are open in this process (0: none).
_FREEZING = 0


@contextlib.contextmanager
def frozen_between_trials() -> Iterator[None]:
    """While a search loop runs, what is alive after the full collection that follows each trial
    (:func:`release_memory`) is frozen (``gc.freeze``), so that the next collection scans only
    what was made since. A search keeps its study's trials (thousands of records and Optuna's
    own cache of them) for the whole run: a full collection that scanned them after every trial
    grew with the study (0.35 s at 500 trials, 0.63 s at 5000, on a loaded 2-core machine).
    Everything is unfrozen when the outermost loop ends, so that what became cyclic garbage
    meanwhile is collected then."""
    global _FREEZING
    _FREEZING += 1
    try:
        yield
    finally:
        _FREEZING -= 1
        if not _FREEZING:
            gc.unfreeze()


def release_memory(device: torch.device | str | None = None) -> None:
    """Free what a finished trial left behind (Python garbage and the CUDA cache)."""
    gc.collect()
    if _FREEZING:
        gc.freeze()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.empty_cache()


def evaluate(
    arch: Architecture,
    training: TrainingSettings,
    seed: int,
    on_epoch: EpochCallback | None = None,
    full_train: bool = False,
    model_hook: Callable[[torch.nn.Module], None] | None = None,
    checkpoint: Path | None = None,
    checkpoint_every: int = 0,
    device: torch.device | None = None,
) -> TrialResult:
    """Build ``arch``, train it with ``training`` and measure it.

    Search uses the validation split (``full_train=False``); final retraining trains on the
    whole training set and measures the test split (``full_train=True``). FLOPs are counted
    on the trained model, which matters only for free (unbalanced) FLGC, whose connections
    are learned. ``device``: where to train (the search resolves it once per process);
    ``training.device`` when not given.
    """
    if training.threads:
        torch.set_num_threads(training.threads)
    if device is None:
        device = resolve_device(training.device)
    data = get_dataset(training, full_train=full_train)
    if arch.num_classes != data.num_classes:
        raise ValueError(f"architecture has {arch.num_classes} classes but {data.name} has {data.num_classes}")
    torch.manual_seed(seed)
    model = build_model(arch)
    started = time.perf_counter()
    history = train_model(
        model,
        data,
        training,
        seed,
        device,
        on_epoch,
        evaluate_on="test" if full_train else "val",
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
    )
    seconds = time.perf_counter() - started
    model.to("cpu", memory_format=torch.contiguous_format)
    # Only free FLGC groups learn what they cost; every other candidate costs what it cost
    # before training (counted once, cached), and counting it again took two ptflops passes.
    cost = count_cost(model) if learns_its_cost(arch) else architecture_cost(arch)
    last = history[-1]
    result = TrialResult(
        architecture=arch,
        accuracy=float(last.val_accuracy if last.val_accuracy is not None else float("nan")),
        val_loss=float(last.val_loss if last.val_loss is not None else float("nan")),
        cost=cost,
        curve=history,
        train_seconds=seconds,
        device=str(device),
        seed=seed,
        epochs_run=len(history),
        stopped_early=len(history) < training.epochs,
    )
    if model_hook is not None:
        model_hook(model)
    del model
    release_memory(device)
    return result


def trained_attributes(
    cost: Cost, curve: list[dict[str, Any]], train_seconds: float, stopped_early: bool
) -> dict[str, Any]:
    """The user attributes of a trained (or early-stopped) candidate: its cost, its curve (one
    :meth:`EpochRecord.to_json` an epoch) and its training time, whichever backend trained it."""
    return {
        "status": "early_stopped" if stopped_early else "ok",
        "mflops": cost.mflops,
        "mflops_all_ops": cost.mflops_all_ops,
        "params": cost.params,
        "curve": curve,
        "train_seconds": round(train_seconds, 3),
        "epochs_run": len(curve),
        "fidelity": "full",
    }


def result_attributes(result: TrialResult) -> dict[str, Any]:
    """The user attributes a trial records (both backends write exactly these)."""
    curve = [record.to_json() for record in result.curve]
    return {
        "architecture": result.architecture.to_json(),
        **trained_attributes(result.cost, curve, result.train_seconds, result.stopped_early),
        "device": result.device,
        "seed": result.seed,
    }
