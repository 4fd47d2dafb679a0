"""Library output the tool replaces with its own progress lines."""

from __future__ import annotations

import warnings

__all__ = ["quiet_libraries"]


def quiet_libraries() -> None:
    """Optuna's per-trial log lines and experimental-API warnings would only repeat the
    tool's progress; its own heartbeat runs outside ``study.optimize`` on purpose."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
