"""The option tables of a search: the named choices, the objectives, the data sets, the
hyperparameters ``--tune`` can sweep, and the presets."""

from __future__ import annotations

from typing import Any

import search.objectives as objective_table

__all__ = [
    "BACKENDS",
    "CUDA_GRAPH_MODES",
    "DATASETS",
    "DATASET_CLASSES",
    "EARLY_STOP_MODES",
    "LATENCY_MODES",
    "OBJECTIVES",
    "OBJECTIVE_ALIASES",
    "OBJECTIVE_SENSES",
    "PRESETS",
    "SAMPLERS",
    "STRATEGIES",
    "TUNABLE",
]

SAMPLERS = ("tpe", "nsga2", "gp", "random")
BACKENDS = ("optuna", "ray")
OBJECTIVES = tuple(objective_table.OBJECTIVES)  # names, from the one table of objectives
# Names the command line also accepts for an objective.
OBJECTIVE_ALIASES = {"latency": "latency_ms", "flops": "mflops"}
LATENCY_MODES = ("measured", "table")
STRATEGIES = ("train-each", "one-shot")
# How a training step runs on CUDA (search/evaluation/step.py): replayed from a captured CUDA
# graph where that measures faster, always where possible, or never.
CUDA_GRAPH_MODES = ("auto", "on", "off")
# Direction of every objective the tool knows.
EARLY_STOP_MODES = ("auto", "mo-asha", "none")
OBJECTIVE_SENSES = objective_table.OBJECTIVE_SENSES
# Training hyperparameters that --tune can add to a space, with their search ranges.
TUNABLE: dict[str, tuple[str, Any]] = {
    "lr": ("log", (1e-3, 0.4)),
    "weight_decay": ("log", (1e-5, 1e-2)),
    "label_smoothing": ("float", (0.0, 0.2)),
    "batch_size": ("choice", (32, 64, 128, 256)),
}
# Presets fill options the user did not give on the command line.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"dataset": "digits", "width": 0.25, "epochs": 5, "batch_size": 64, "lr": 0.1, "warmup_epochs": 0.5},
    "cifar": {"dataset": "cifar10", "width": 1.0, "epochs": 15, "batch_size": 128, "lr": 0.1},
}

# The data sets the tool knows and their classes (search/evaluation/data.py loads them).
DATASET_CLASSES: dict[str, int] = {"cifar10": 10, "cifar100": 100, "digits": 10, "digits32": 10}
DATASETS: tuple[str, ...] = tuple(DATASET_CLASSES)
