"""The settings of a search run: the full record the CLI fills (run.json stores it whole),
with its parts by concern (:mod:`search.settings._parts`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.settings._options import OBJECTIVE_ALIASES, OBJECTIVES, TUNABLE
from search.settings._parts import EarlyStopping, LocalWorkers, OneShotSettings, RaySettings, Scoring, StorageTarget
from search.settings._training import TrainingSettings
from search.settings._validation import (
    CHOICES,
    NUMBERS,
    SettingsError,
    check_choice,
    check_number,
    check_ray_address,
    check_study_name,
    check_text,
)

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    """Everything a search run needs."""

    space: str = "vgg_hetconv"
    budget: int = 50
    width: float | None = None
    training: TrainingSettings = field(default_factory=TrainingSettings)
    tune: tuple[str, ...] = ()
    objectives: tuple[str, ...] = ("accuracy", "mflops")
    sampler: str = "tpe"
    seed: int = 0
    backend: str = "optuna"
    results_dir: str = "results"
    storage: str | None = None
    study_name: str | None = None
    max_mflops: float | None = None
    baselines: bool | None = None  # None: queued when they take at most half the budget
    confirm: int = 2  # --confirm R: every front configuration ends with R + 1 runs
    race: int = 3  # --race K: a member not resolved from the next cheaper one gets up to K runs more
    max_failures: int = 5
    checkpoint_every: int = 0  # save training state every K epochs (0: never)
    latency: str = "measured"  # how the latency objective is obtained: measured or table
    latency_batch: int = 1  # batch size the latency objective is measured at
    strategy: str = "train-each"  # or "one-shot": a weight-sharing supernet scores candidates
    retrain_top: int = 3  # one-shot: configurations of its front retrained from scratch
    supernet_epochs: int | None = None  # one-shot: supernet training epochs (default 4 x --epochs)
    early_stop: str | None = "none"  # "mo-asha" (multi-objective successive halving), "none", or "auto"
    min_epochs: int = 1  # first rung
    eta: int = 3  # a trial continues past a rung if among the best 1/eta there
    workers: int = 1  # worker processes on this machine
    trials_per_gpu: int | None = None  # Optuna backend on CUDA: worker processes per GPU (None: auto)
    worker_index: int | None = None  # set in the processes --workers starts
    # Ray backend
    ray_address: str | None = None  # join this cluster ("auto" or host:port); None: a local Ray
    ray_storage: str | None = None  # Ray's results (shared or cloud storage for multi-node)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 where the cluster has GPUs, else 0
    max_concurrent: int | None = None
    ray_retries: int = 2  # Ray-level retries of a crashed trial
    preset: str | None = None
    quiet: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "objectives", tuple(OBJECTIVE_ALIASES.get(o, o) for o in self.objectives))
        self.validate()

    def validate(self) -> None:
        """Every option by the tables (numbers, choices, text), then the rules between options.
        Runs before anything touches a storage or the disk."""
        t = self.training
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in NUMBERS:
                check_number(f.name, value)
            elif f.name in CHOICES and not (value is None and f.name in ("preset", "early_stop")):
                check_choice(f.name, value)
        if not isinstance(t, TrainingSettings):
            raise SettingsError(f"training must be TrainingSettings, got {type(t).__name__}")
        t.validate()
        for name in ("space", "results_dir"):
            check_text(name, getattr(self, name), optional=False)
        for name in ("storage", "ray_storage"):
            check_text(name, getattr(self, name))
        if self.study_name is not None:
            check_study_name(self.study_name)
        check_ray_address(self.ray_address)
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad or "accuracy" not in self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise SettingsError(
                f"--objectives must list accuracy and any of mflops, params, latency once each, got {','.join(self.objectives)}"
            )
        bad = [name for name in self.tune if name not in TUNABLE]
        if bad:
            raise SettingsError(f"cannot --tune {', '.join(bad)}; tunable: {', '.join(TUNABLE)}")
        if len(set(self.tune)) != len(self.tune):  # as --objectives: a list names each once
            raise SettingsError(f"--tune must name each of {', '.join(TUNABLE)} once, got {','.join(self.tune)}")
        if self.early_stop == "mo-asha" and self.min_epochs >= t.epochs:
            raise SettingsError(f"--early-stop needs --min-epochs ({self.min_epochs}) below --epochs ({t.epochs})")

    # ------------------------------------------------------------ the parts, by concern

    @property
    def storage_target(self) -> StorageTarget:
        return StorageTarget.of(self.results_dir, self.storage, self.study)

    @property
    def scoring(self) -> Scoring:
        return Scoring(self.objectives, self.latency, self.latency_batch, self.max_mflops)

    @property
    def early_stopping(self) -> EarlyStopping:
        t = self.training
        return EarlyStopping(self.early_stop, self.min_epochs, self.eta, t.epochs, self.objectives, t.dataset)

    @property
    def one_shot(self) -> OneShotSettings:
        return OneShotSettings(self.retrain_top, self.supernet_epochs or 4 * self.training.epochs)

    @property
    def local_workers(self) -> LocalWorkers:
        return LocalWorkers(self.workers, self.trials_per_gpu, self.worker_index)

    @property
    def ray(self) -> RaySettings:
        return RaySettings(
            self.ray_address,
            self.ray_storage,
            self.cpus_per_trial,
            self.gpus_per_trial,
            self.max_concurrent,
            self.ray_retries,
        )

    # ------------------------------------------------------------ shortcuts into the parts

    @property
    def stops_early(self) -> bool:
        """Whether trials of this run are early-stopped (:attr:`EarlyStopping.enabled`)."""
        return self.early_stopping.enabled

    @property
    def study(self) -> str:
        return self.study_name or f"{Path(self.space).stem}-{self.training.dataset}"

    @property
    def storage_url(self) -> str:
        return self.storage_target.url

    @property
    def study_dir(self) -> Path:
        return self.storage_target.study_dir

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tune"], data["objectives"] = list(self.tune), list(self.objectives)
        return data
