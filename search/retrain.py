"""Final retraining of an exported config: the whole training set, then the test split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from models import Architecture, ArchitectureError, validate

from .cost import architecture_cost
from .errors import UserError
from .evaluate import evaluate
from .settings import TrainingSettings

__all__ = ["load_config", "retrain_config"]


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except OSError as err:
        raise UserError(f"cannot read config {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"config {path} is not valid JSON: {err}") from None
    if not isinstance(config, dict) or "architecture" not in config:
        raise UserError(f"config {path} has no 'architecture'; export configs with 'run_search.py export'")
    try:
        validate(Architecture.from_json(config["architecture"]))
    except ArchitectureError as err:
        raise ArchitectureError(f"config {path}: {err}") from None
    return config


def retrain_config(
    path: str | Path, epochs: int | None = None, device: str | None = None, data_dir: str | None = None
) -> dict[str, Any]:
    """Train the config at ``path`` on the full training set with its recipe, measure test
    accuracy, and save ``<name>.pt`` (state dict) and ``<name>.retrain.json`` beside it."""
    path = Path(path)
    config = load_config(path)
    arch = Architecture.from_json(config["architecture"])
    training = TrainingSettings.from_json(config.get("training", {}))
    overrides = {"epochs": epochs, "device": device, "data_dir": data_dir}
    training = training.replace(**{k: v for k, v in overrides.items() if v is not None})
    weights = path.with_suffix(".pt")
    result = evaluate(
        arch, training, int(config.get("seed") or 0), full_train=True,
        model_hook=lambda model: torch.save(model.state_dict(), weights),
    )  # fmt: skip
    expected = architecture_cost(arch)
    summary = {
        "config": str(path),
        "test_accuracy": result.accuracy,
        "test_loss": result.val_loss,
        "mflops": result.cost.mflops,
        "mflops_all_ops": result.cost.mflops_all_ops,
        "params": result.cost.params,
        "mflops_as_exported": config.get("metrics", {}).get("mflops"),
        "mflops_rebuilt": expected.mflops,
        "epochs": training.epochs,
        "train_seconds": round(result.train_seconds, 2),
        "device": result.device,
        "weights": str(weights),
        "curve": [r.to_json() for r in result.curve],
    }
    path.with_suffix(".retrain.json").write_text(json.dumps(summary, indent=2))
    return summary
