"""Settings of a search: one typed value that the CLI fills and every later step reads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BACKENDS",
    "LATENCY_MODES",
    "OBJECTIVES",
    "OBJECTIVE_ALIASES",
    "OBJECTIVE_SENSES",
    "PRESETS",
    "SAMPLERS",
    "STRATEGIES",
    "TUNABLE",
    "Settings",
    "SettingsError",
    "TrainingSettings",
]

SAMPLERS = ("tpe", "nsga2", "gp", "random")
BACKENDS = ("optuna", "ray")
OBJECTIVES = ("accuracy", "mflops", "params", "latency_ms")
# Names the command line also accepts for an objective.
OBJECTIVE_ALIASES = {"latency": "latency_ms", "flops": "mflops"}
LATENCY_MODES = ("measured", "table")
STRATEGIES = ("train-each", "one-shot")
# Direction of every objective the tool knows.
EARLY_STOP_MODES = ("auto", "mo-asha", "none")
OBJECTIVE_SENSES = {"accuracy": "max", "mflops": "min", "params": "min", "latency_ms": "min"}
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


class SettingsError(ValueError):
    """A user-facing problem with the options."""


@dataclass(frozen=True)
class TrainingSettings:
    """How one candidate is trained and evaluated (identical for every trial of a study,
    except for the hyperparameters a ``--tune`` sweep samples)."""

    dataset: str = "cifar10"
    data_dir: str = "data"
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    warmup_epochs: float = 1.0
    val_size: int | None = None
    split_seed: int = 0
    device: str = "auto"
    amp: bool = True  # used only on CUDA
    channels_last: bool = True  # used only on CUDA
    threads: int | None = None  # torch CPU threads per trial (None: torch's default)

    def replace(self, **changes: Any) -> TrainingSettings:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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
    baselines: bool = False
    max_failures: int = 5
    checkpoint_every: int = 0  # save training state every K epochs (0: never)
    latency: str = "measured"  # how the latency objective is obtained: measured or table
    latency_batch: int = 1  # batch size the latency objective is measured at
    strategy: str = "train-each"  # or "one-shot": a weight-sharing supernet scores candidates
    retrain_top: int = 3  # one-shot: configurations of its front retrained from scratch
    supernet_epochs: int | None = None  # one-shot: supernet training epochs (default 4 x --epochs)
    early_stop: str | None = "auto"  # "mo-asha" (multi-objective successive halving), "none", or "auto"
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
        t = self.training
        if self.budget <= 0:
            raise SettingsError(f"--budget must be a positive number of trials, got {self.budget}")
        if self.sampler not in SAMPLERS:
            raise SettingsError(f"unknown sampler {self.sampler!r}; use one of {', '.join(SAMPLERS)}")
        if self.backend not in BACKENDS:
            raise SettingsError(f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad or "accuracy" not in self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise SettingsError(
                f"--objectives must list accuracy and any of mflops, params, latency once each, got {','.join(self.objectives)}"
            )
        if self.latency not in LATENCY_MODES or self.latency_batch < 1:
            raise SettingsError(f"--latency must be one of {', '.join(LATENCY_MODES)} and --latency-batch >= 1")
        bad = [name for name in self.tune if name not in TUNABLE]
        if bad:
            raise SettingsError(f"cannot --tune {', '.join(bad)}; tunable: {', '.join(TUNABLE)}")
        if t.epochs <= 0 or t.batch_size <= 0:
            raise SettingsError("--epochs and --batch-size must be positive")
        if t.lr <= 0 or t.weight_decay < 0 or not 0 <= t.label_smoothing < 1 or t.warmup_epochs < 0:
            raise SettingsError("--lr must be > 0, --weight-decay >= 0, --label-smoothing in [0, 1), --warmup-epochs >= 0")
        if self.cpus_per_trial <= 0 or (self.gpus_per_trial is not None and self.gpus_per_trial < 0):
            raise SettingsError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise SettingsError(f"--max-concurrent must be at least 1, got {self.max_concurrent}")
        if self.early_stop not in (None, *EARLY_STOP_MODES):
            raise SettingsError(f"unknown --early-stop {self.early_stop!r}; use {', '.join(EARLY_STOP_MODES)}")
        if self.min_epochs < 1 or self.eta < 2:
            raise SettingsError(f"--min-epochs must be >= 1 and --eta >= 2, got {self.min_epochs} and {self.eta}")
        if self.early_stop == "mo-asha" and self.min_epochs >= t.epochs:
            raise SettingsError(f"--early-stop needs --min-epochs ({self.min_epochs}) below --epochs ({t.epochs})")
        if self.strategy not in STRATEGIES:
            raise SettingsError(f"unknown --strategy {self.strategy!r}; use {' or '.join(STRATEGIES)}")
        if self.retrain_top < 0 or (self.supernet_epochs is not None and self.supernet_epochs < 1):
            raise SettingsError("--retrain-top must be >= 0 and --supernet-epochs >= 1")
        if self.checkpoint_every < 0 or self.workers < 1:
            raise SettingsError("--checkpoint-every must be >= 0 and --workers >= 1")
        if self.trials_per_gpu is not None and self.trials_per_gpu < 1:
            raise SettingsError(f"--trials-per-gpu must be >= 1, got {self.trials_per_gpu}")
        if self.max_failures < 1:
            raise SettingsError(f"--max-failures must be at least 1, got {self.max_failures}")
        if self.max_mflops is not None and self.max_mflops <= 0:
            raise SettingsError(f"--max-mflops must be positive, got {self.max_mflops}")
        if self.width is not None and not 0 < self.width <= 4:
            raise SettingsError(f"--width must be in (0, 4], got {self.width}")

    def supernet_epochs_or_default(self) -> int:
        return self.supernet_epochs or 4 * self.training.epochs

    @property
    def stops_early(self) -> bool:
        """Whether trials of this run are early-stopped. ``auto`` (the default) stops early
        whenever ``--epochs`` leaves a rung below it: bench/early_stopping.py measured the same
        front quality for under half the training epochs (README, Early stopping)."""
        if self.early_stop == "auto":
            return self.min_epochs < self.training.epochs
        return self.early_stop == "mo-asha"

    def early_stop_line(self) -> str:
        """What the start of a search says about early stopping (it is on by default)."""
        rule = self.stopping_rule()
        if rule is None:
            return "early stopping off"
        rungs = ", ".join(map(str, rule.rungs))
        return (f"early stopping mo-asha at epochs {rungs} of {self.training.epochs}, the best 1/{self.eta} go on "
                "(--early-stop none: train every trial to the end)")  # fmt: skip

    def stopping_rule(self):
        """The early-stopping rule of this run, or None."""
        if not self.stops_early:
            return None
        from .early_stopping import MultiObjectiveASHA

        from .data import num_classes_of

        senses = [OBJECTIVE_SENSES[o] for o in self.objectives]
        return MultiObjectiveASHA(self.min_epochs, self.eta, self.training.epochs, senses,
                                  chance_level=1 / num_classes_of(self.training.dataset),
                                  accuracy_index=self.objectives.index("accuracy"))  # fmt: skip

    @property
    def study(self) -> str:
        return self.study_name or f"{Path(self.space).stem}-{self.training.dataset}"

    @property
    def storage_url(self) -> str:
        if self.storage:
            return self.storage
        return f"sqlite:///{Path(self.results_dir).resolve() / 'studies.db'}"

    @property
    def study_dir(self) -> Path:
        return Path(self.results_dir) / self.study

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tune"], data["objectives"] = list(self.tune), list(self.objectives)
        return data
