"""The parts of a search's settings, one per concern: each step takes the part it reads
(``Settings.storage_target``, ``.scoring``, ``.early_stopping``, ``.one_shot``,
``.local_workers``, ``.ray``) instead of the whole record. Each part is a frozen copy made
when asked for; the values were validated by :class:`~search.settings.Settings`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from search.settings._validation import SettingsError

__all__ = [
    "EarlyStopping",
    "LocalWorkers",
    "OneShotSettings",
    "RaySettings",
    "Scoring",
    "StorageTarget",
    "default_storage_url",
]


def default_storage_url(results_dir: str) -> str:
    """The storage of a run without ``--storage``: ``studies.db`` in ``--results-dir``."""
    try:
        folder = Path(results_dir).resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symbolic-link loop (Python < 3.13)
        raise SettingsError(f"--results-dir {results_dir} cannot be used: {err}") from None
    return f"sqlite:///{folder / 'studies.db'}"


@dataclass(frozen=True)
class StorageTarget:
    """Where a study lives: the Optuna storage, the study's name there, and the folder its
    outputs (run.json, report, exported configs) go to."""

    url: str  # --storage, or the default under results_dir
    explicit: bool  # --storage was given: its folder must exist (a typo never starts a study elsewhere)
    study_name: str
    results_dir: str

    @classmethod
    def of(cls, results_dir: str, storage: str | None, study_name: str) -> StorageTarget:
        """The target of ``--results-dir``, ``--storage`` (None: the default) and a study name."""
        return cls(storage or default_storage_url(results_dir), bool(storage), study_name, results_dir)

    @property
    def study_dir(self) -> Path:
        return Path(self.results_dir) / self.study_name


@dataclass(frozen=True)
class Scoring:
    """What a candidate is scored on: the objectives (accuracy and some costs), how the
    latency objective is obtained, and the FLOPs ceiling above which it is not trained."""

    objectives: tuple[str, ...]
    latency: str  # measured or table
    latency_batch: int
    max_mflops: float | None


@dataclass(frozen=True)
class EarlyStopping:
    """``--early-stop`` and its rungs: what search/strategies/early_stopping.py builds the
    MO-ASHA rule of a run from (:func:`search.strategies.early_stopping.stopping_rule`)."""

    mode: str | None  # auto, mo-asha or none (None: as none)
    min_epochs: int  # first rung
    eta: int  # a trial continues past a rung if among the best 1/eta there
    max_epochs: int  # --epochs: full training, never a rung
    objectives: tuple[str, ...]  # compared at a rung, in this order
    dataset: str  # its chance level: a trial at chance at a rung is not judged yet

    @property
    def enabled(self) -> bool:
        """Whether trials are early-stopped. ``none`` is the default: on ``digits32``
        bench/early_stopping.py found 95 % of the front's hypervolume in only 2 of 3 seeds
        (docs/early-stopping.md). ``auto`` stops early whenever ``--epochs`` leaves a rung
        below it."""
        if self.mode == "auto":
            return self.min_epochs < self.max_epochs
        return self.mode == "mo-asha"


@dataclass(frozen=True)
class OneShotSettings:
    """``--strategy one-shot``: the supernet's training and the retraining of its front."""

    retrain_top: int  # configurations of the supernet's front retrained from scratch
    supernet_epochs: int  # --supernet-epochs, or 4 x --epochs when not given


@dataclass(frozen=True)
class LocalWorkers:
    """Worker processes of the Optuna backend on this machine, one study."""

    count: int  # --workers
    trials_per_gpu: int | None  # on CUDA: worker processes per GPU (None: auto)
    index: int | None  # this process's index among them (None: the starting process)


@dataclass(frozen=True)
class RaySettings:
    """The Ray backend: which cluster, where Ray keeps its results, what a trial reserves."""

    address: str | None  # "auto" or host:port; None: start a local Ray
    storage: str | None  # Ray's results (shared or cloud storage for multi-node); None: under the study's folder
    cpus_per_trial: float
    gpus_per_trial: float | None  # None: 1 where the cluster has GPUs, else 0
    max_concurrent: int | None  # None: as resources allow
    retries: int  # Ray-level retries of a crashed trial
