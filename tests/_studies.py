"""Reading the SQLite studies that test searches write (``<results-dir>/studies.db``)."""

from __future__ import annotations

from pathlib import Path

import optuna

DEFAULT_STUDY = "vgg_hetconv-digits"  # what a search of the default space on digits is called


def storage_url(results_dir: Path) -> str:
    return f"sqlite:///{results_dir / 'studies.db'}"


def load(results_dir: Path, name: str = DEFAULT_STUDY) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage_url(results_dir))
