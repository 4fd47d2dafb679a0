"""Final retraining of an exported config: the whole training set, then the test split."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from models import Architecture, ArchitectureError, validate
from search.errors import UserError
from search.evaluation.cost import architecture_cost
from search.evaluation.evaluate import evaluate
from search.settings import NUMBERS, SettingsError, TrainingSettings, check_device_available, check_number

__all__ = ["check_writable", "config_training", "load_config", "retrain_config"]

MAX_CONFIG_BYTES = 1 << 20  # an exported config is a few KiB


def load_config(path: str | Path) -> dict[str, Any]:
    """An exported config, checked whole (architecture, training recipe, seed, metrics) before use."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise UserError(f"config {path} is over {MAX_CONFIG_BYTES >> 20} MiB; an exported config is a few KiB")
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read config {path}: {err.strerror}") from None
    try:
        config = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"config {path} is not UTF-8 text (byte {err.start}); give an exported JSON config") from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise UserError(f"config {path} is not valid JSON: {str(err)[:200]}") from None
    except ValueError:  # the parser's limit on the digits of an integer literal
        raise UserError(
            f"config {path} is not valid JSON for this tool: a number is too long (over "
            f"{sys.get_int_max_str_digits()} digits); give an exported config"
        ) from None
    if not isinstance(config, dict) or "architecture" not in config:
        raise UserError(f"config {path} has no 'architecture'; export configs with 'run_search.py export'")
    for name in ("architecture", "training", "seed"):
        try:
            huge = _huge_number(config.get(name), name)
        except RecursionError:
            raise UserError(f"config {path}: '{name}' is nested too deeply; give an exported config") from None
        if huge:
            raise UserError(
                f"config {path}: {huge} is a number too large to use; fix that value (no exported config has one)"
            )
    try:
        arch = Architecture.from_json(config["architecture"])
        validate(arch)
    except ArchitectureError as err:
        raise ArchitectureError(f"config {path}: {err}") from None
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as err:
        raise UserError(
            f"config {path}: 'architecture' is malformed ({type(err).__name__}: {str(err)[:150]})"
        ) from None
    config_training(config, path)
    seed = config.get("seed")
    if seed is not None and not NUMBERS["seed"].accepts(seed):
        raise UserError(f"config {path}: seed must be {NUMBERS['seed'].describe()}, got {seed!r}")
    metrics = config.get("metrics", {})
    if not isinstance(metrics, dict):
        raise UserError(
            f"config {path}: 'metrics' must be a mapping (as 'run_search.py export' writes it) or absent, "
            f"got {type(metrics).__name__}; remove it or re-export the config"
        )
    return config


def _huge_number(value: Any, where: str) -> str | None:
    """Where in ``value`` (a parsed JSON value) an integer lies beyond float's range (which
    ``float()``, ``math.isfinite`` and the like refuse with OverflowError), e.g.
    ``architecture.layers[3].part``; None if nowhere."""
    if isinstance(value, int) and not isinstance(value, bool):
        return where if abs(value) > sys.float_info.max else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _huge_number(item, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}")
        if found:
            return found
    return None


def config_training(config: dict[str, Any], path: Path, **overrides: Any) -> TrainingSettings:
    """The config's training recipe (with ``overrides``), every field checked by the same
    table as the command line, and its data set's classes matching the architecture's."""
    where = f"config {path}: training."
    if "training" not in config:  # every exporter version wrote one; without it, data set and recipe are guesses
        raise UserError(
            f"config {path} has no 'training' recipe; re-export it with 'run_search.py export' (which always writes one)"
        )
    training = config["training"]
    if not isinstance(training, dict):
        raise UserError(f"config {path}: 'training' must be a mapping of settings, got {type(training).__name__}")
    known = [f.name for f in dataclasses.fields(TrainingSettings)]
    unknown = sorted(k for k in training if k not in known)
    # from_json drops unknown keys: a misspelt field would silently train with the default. (Every
    # version of the tool wrote the same fields, so no old config carries one.)
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        )
        raise UserError(
            f"config {path}: unknown training field{'s' if len(unknown) > 1 else ''} {shown}; "
            f"the known fields are {', '.join(known)}"
        )
    try:
        result = TrainingSettings.from_json(training).replace(**{k: v for k, v in overrides.items() if v is not None})
        result.validate(where)
    except TypeError as err:
        raise UserError(f"{where[:-1]} is malformed: {err}") from None
    except SettingsError as err:
        raise UserError(str(err)) from None
    from search.evaluation.data import num_classes_of

    classes = Architecture.from_json(config["architecture"]).num_classes
    if classes != num_classes_of(result.dataset):
        raise UserError(
            f"config {path}: the architecture has {classes} classes but dataset {result.dataset} has "
            f"{num_classes_of(result.dataset)}; fix 'num_classes' or training.dataset"
        )
    return result


def check_writable(path: Path) -> None:
    """Outputs go beside the config: fail before training, not after."""
    folder = path.parent if str(path.parent) else Path(".")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(
            f"cannot write beside config {path}: {folder} is not writable; copy the config to a folder you own"
        )


def retrain_config(
    path: str | Path, epochs: int | None = None, device: str | None = None, data_dir: str | None = None
) -> dict[str, Any]:
    """Train the config at ``path`` on the full training set with its recipe, measure test
    accuracy, and save ``<name>.pt`` (state dict) and ``<name>.retrain.json`` beside it."""
    path = Path(path)
    if epochs is not None:
        check_number("epochs", epochs)
    config = load_config(path)
    check_writable(path)
    arch = Architecture.from_json(config["architecture"])
    training = config_training(config, path, epochs=epochs, device=device, data_dir=data_dir)
    check_device_available(training.device)
    weights = path.with_suffix(".pt")
    result = evaluate(
        arch,
        training,
        int(config.get("seed") or 0),
        full_train=True,
        model_hook=lambda model: torch.save(model.state_dict(), weights),
    )
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
