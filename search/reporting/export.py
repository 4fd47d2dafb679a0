"""Export of Pareto-optimal configs: one JSON file per configuration on the front (named after its
first run), enough to rebuild and retrain the exact model anywhere (architecture, metrics on the
mean of its runs, every run's seed and accuracy, training recipe, versions)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna

from search.files import atomic_write_text
from search.reporting.configurations import Configuration
from search.reporting.front import pareto_configurations
from search.settings import TrainingSettings
from search.storage import TrialRecord, load_records, study_objectives
from search.versions import package_versions

__all__ = ["CONFIG_FORMAT", "OFF_FRONT", "config_of", "export_pareto"]

CONFIG_FORMAT = "flgc-hetconv-nas/config/v1"


def config_of(
    study: optuna.Study,
    record: TrialRecord,
    config: Configuration | None = None,
    study_attrs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The exported config of one trial, or of the configuration it is the first run of:
    its accuracy is then the mean over the runs, each run listed with its seed. ``study_attrs``:
    the study's user attributes when the caller has read them already (each read is a query,
    and a front may have hundreds of configurations)."""
    assert record.architecture is not None
    attrs = study.user_attrs if study_attrs is None else study_attrs
    if config is not None:
        record = config.record
    runs = (
        config.runs_json()
        if config is not None
        else [{"trial": record.number, "seed": record.seed, "accuracy": record.accuracy}]
    )
    training = TrainingSettings.from_json(attrs.get("training", {})).replace(**record.hyperparameters)
    return {
        "format": CONFIG_FORMAT,
        "study": study.study_name,
        "trial": record.number,
        "space": attrs.get("space_name"),
        "dataset": attrs.get("dataset"),
        "architecture": record.architecture.to_json(),
        "metrics": {
            **record.values,
            "mflops": record.mflops,
            "mflops_all_ops": record.mflops_all_ops,
            "params": record.params,
            "val_accuracy": record.accuracy,
            "runs": len(runs),
            "accuracy_sd": config.accuracy_sd if config is not None else None,
            "fidelity": record.user_attrs.get("fidelity", "full"),
            "epochs_run": record.epochs_run,
            "train_seconds": record.train_seconds,
        },
        "training": training.to_json(),
        "hyperparameters": record.hyperparameters,
        "seed": record.seed,
        "runs": runs,
        "baseline": record.baseline if config is None else config.baseline,
        "trained_on": record.device,
        "versions": package_versions(),
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


OFF_FRONT = "off_front"  # where a config that left the front goes, with its retrain/deploy outputs


def export_pareto(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Write ``trial_<n>.json`` for every configuration on the front (``n``: its first run) into ``out_dir``; configs of
    trials that are no longer on the front (it moves as a search runs) are removed, or, where
    they have outputs beside them (``trial_<n>.pt`` from ``retrain``, deployed models), moved
    with those outputs into ``out_dir/off_front/``, so that no retrained model loses its config."""
    out_dir.mkdir(parents=True, exist_ok=True)
    front = pareto_configurations(load_records(study), study_objectives(study))
    attrs = study.user_attrs
    written = []
    for config in front:
        path = out_dir / f"trial_{config.number}.json"
        exported = config_of(study, config.record, config, attrs)
        atomic_write_text(path, json.dumps(exported, indent=2, sort_keys=False))
        written.append(path)
    configs = {p for p in out_dir.glob("trial_*.json") if p.stem[len("trial_") :].isdigit()}
    for stale in sorted(configs - set(written)):
        outputs = [p for p in out_dir.glob(f"{stale.stem}.*") if p != stale]
        if not outputs:
            stale.unlink()
            continue
        shelf = out_dir / OFF_FRONT
        shelf.mkdir(exist_ok=True)
        for item in [stale, *outputs]:
            item.replace(shelf / item.name)
    return written
