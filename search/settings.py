"""Settings of a search: one typed value that the CLI fills and every later step reads."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import search.objectives as objective_table

__all__ = [
    "BACKENDS",
    "CHOICES",
    "LATENCY_MODES",
    "NUMBERS",
    "Number",
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
    "check_choice",
    "check_device",
    "check_number",
    "check_study_name",
    "check_text",
    "mask_url",
    "option_name",
    "scrub",
    "url_secrets",
]

SAMPLERS = ("tpe", "nsga2", "gp", "random")
BACKENDS = ("optuna", "ray")
OBJECTIVES = tuple(objective_table.OBJECTIVES)  # names, from the one table of objectives
# Names the command line also accepts for an objective.
OBJECTIVE_ALIASES = {"latency": "latency_ms", "flops": "mflops"}
LATENCY_MODES = ("measured", "table")
STRATEGIES = ("train-each", "one-shot")
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


class SettingsError(ValueError):
    """A user-facing problem with the options."""


# ---------------------------------------------------------------- the validation table
# Every numeric option and config field has ONE rule here; the CLI parses with it, and
# Settings / TrainingSettings check with it (so values from code or exported configs too).
# A new numeric option is one line in NUMBERS; a new named choice one entry in CHOICES.

SEED_MAX = 2**31 - 1  # leaves 2**31 headroom for every offset added before numpy's limit 2**32 - 1
INT_MAX = 2**31 - 1  # torch, numpy and SQLite all take a C int


@dataclass(frozen=True)
class Number:
    """A numeric option's rule: int or float, bounds (open or closed), None allowed or not.
    NaN and infinities are never allowed: no option of this tool means anything with them."""

    kind: type  # int or float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False  # None means "the default"

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            return f"{what} in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '<='} {_num(self.high)}"
        return what

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, int if self.kind is int else (int, float)):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def parse(self, text: str) -> int | float:
        """``type=`` of an argparse option: the value or ArgumentTypeError (one line, exit 2)."""
        import argparse

        try:
            value = self.kind(text.strip())
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}") from None
        if not self.accepts(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}")
        return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


NUMBERS: dict[str, Number] = {
    # search
    "budget": Number(int, 1, INT_MAX),
    "width": Number(float, 0, 4, low_open=True, optional=True),
    "latency_batch": Number(int, 1, 4096),
    "max_mflops": Number(float, 0, low_open=True, optional=True),
    "retrain_top": Number(int, 0, INT_MAX),
    "supernet_epochs": Number(int, 1, INT_MAX, optional=True),
    "min_epochs": Number(int, 1, INT_MAX),
    "eta": Number(int, 2, INT_MAX),
    "seed": Number(int, 0, SEED_MAX),
    "max_failures": Number(int, 1, INT_MAX),
    "workers": Number(int, 1, 1024),
    "trials_per_gpu": Number(int, 1, 1024, optional=True),
    "checkpoint_every": Number(int, 0, INT_MAX),
    "cpus_per_trial": Number(float, 0, 4096, low_open=True),
    "gpus_per_trial": Number(float, 0, 4096, optional=True),
    "max_concurrent": Number(int, 1, INT_MAX, optional=True),
    "ray_retries": Number(int, 0, 1000),
    # training (also the fields of an exported config's "training")
    "epochs": Number(int, 1, INT_MAX),
    "batch_size": Number(int, 1, INT_MAX),
    "lr": Number(float, 0, low_open=True),
    "momentum": Number(float, 0, 1, high_open=True),
    "weight_decay": Number(float, 0),
    "label_smoothing": Number(float, 0, 1, high_open=True),
    "warmup_epochs": Number(float, 0),
    "val_size": Number(int, 1, INT_MAX, optional=True),
    "split_seed": Number(int, 0, SEED_MAX),
    "threads": Number(int, 1, 1024, optional=True),
    # other commands
    "classes": Number(int, 2, 100_000),  # flops --classes
    "batch": Number(int, 1, 4096),  # deploy --batch
}


def _datasets() -> tuple[str, ...]:
    from search.evaluation.data import DATASETS

    return DATASETS


# Named choices: a tuple, or a function giving it (for tables owned by another module).
CHOICES: dict[str, tuple[str, ...] | Callable[[], tuple[str, ...]]] = {
    "sampler": SAMPLERS,
    "backend": BACKENDS,
    "latency": LATENCY_MODES,
    "strategy": STRATEGIES,
    "early_stop": EARLY_STOP_MODES,
    "preset": tuple(PRESETS),
    "dataset": _datasets,
}
# Options whose command-line name is not the field name.
_OPTION_NAMES = {"ray_address": "--address", "classes": "--classes"}
_DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d{1,3})?)")
_RAY_ADDRESS = re.compile(r"auto|local|(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}")


def option_name(field_name: str) -> str:
    return _OPTION_NAMES.get(field_name, "--" + field_name.replace("_", "-"))


def check_number(field_name: str, value: Any, where: str = "") -> None:
    """Raise SettingsError unless ``value`` obeys the table's rule for ``field_name``."""
    rule = NUMBERS[field_name]
    if not rule.accepts(value):
        name = f"{where}{field_name}" if where else option_name(field_name)
        raise SettingsError(f"{name} must be {rule.describe()}, got {value!r}")


def check_choice(field_name: str, value: Any, where: str = "") -> None:
    options = CHOICES[field_name]
    options = options() if callable(options) else options
    if value not in options:
        name = f"{where}{field_name}" if where else option_name(field_name)
        raise SettingsError(f"unknown {name} {value!r}; use one of {', '.join(options)}")


def check_device(value: Any, where: str = "") -> None:
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        name = f"{where}device" if where else "--device"
        raise SettingsError(f"{name} must be auto, cpu, mps, cuda or cuda:N, got {value!r}")


def check_text(field_name: str, value: Any, optional: bool = True, limit: int = 4096) -> None:
    """Names and paths: text without control characters, of sane length."""
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip() or len(value) > limit or any(ord(c) < 32 for c in value):
        raise SettingsError(
            f"{option_name(field_name)} must be a non-empty line of text (at most {limit} characters), got {value!r:.80}"
        )


def check_study_name(value: Any, option: str = "--study-name") -> None:
    """A study's name is also a folder under --results-dir: one path component, no traversal."""
    check_text("study_name", value, optional=False, limit=200)
    if any(c in value for c in "/\\") or value.strip() in (".", ".."):
        raise SettingsError(f"{option} {value!r} must be a plain name (it is also a folder): no '/', '\\', '.' or '..'")


# scheme://user:PASSWORD@host...: the password runs to the LAST '@' (passwords may hold '@' or
# '/'); masking too much is harmless, too little is not.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][\w+.\-]*://[^:/@]*:)(?P<password>.+)@(?P<tail>[^@]*)", re.S)


def mask_url(url: str | None) -> str | None:
    """``url`` with its password (if any) replaced by ``***``: what the tool prints and writes
    wherever a storage URL appears (errors, progress, run.json)."""
    match = _USERINFO.fullmatch(url) if url else None
    return f"{match['head']}***@{match['tail']}" if match else url


def url_secrets(*urls: str | None) -> list[str]:
    """The passwords inside ``urls`` (raw and percent-decoded), to scrub from any text."""
    from urllib.parse import unquote

    found: list[str] = []
    for url in urls:
        match = _USERINFO.fullmatch(url) if url else None
        if match:
            found += [s for s in {match["password"], unquote(match["password"])} if s]
    return found


def scrub(text: str, secrets: list[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


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

    def validate(self, where: str = "") -> TrainingSettings:
        """Check every field against the table (``where`` prefixes the field in messages, e.g.
        ``config x.json: training.``; empty: the option names)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in NUMBERS:
                check_number(f.name, value, where)
            elif f.name in ("amp", "channels_last") and not isinstance(value, bool):
                raise SettingsError(f"{where or '--'}{f.name} must be true or false, got {value!r}")
        check_choice("dataset", self.dataset, where)
        check_device(self.device, where)
        if not isinstance(self.data_dir, (str, PurePath)) or not str(self.data_dir) or "\x00" in str(self.data_dir):
            raise SettingsError(
                f"{where or '--'}data{'_' if where else '-'}dir must be a folder name, got {self.data_dir!r}"
            )
        return self

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
        if self.ray_address is not None and not _RAY_ADDRESS.fullmatch(str(self.ray_address)):
            raise SettingsError(
                f"--address must be auto or HOST:PORT (e.g. 10.0.0.1:6379), got {self.ray_address!r:.80}"
            )
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad or "accuracy" not in self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise SettingsError(
                f"--objectives must list accuracy and any of mflops, params, latency once each, got {','.join(self.objectives)}"
            )
        bad = [name for name in self.tune if name not in TUNABLE]
        if bad:
            raise SettingsError(f"cannot --tune {', '.join(bad)}; tunable: {', '.join(TUNABLE)}")
        if self.early_stop == "mo-asha" and self.min_epochs >= t.epochs:
            raise SettingsError(f"--early-stop needs --min-epochs ({self.min_epochs}) below --epochs ({t.epochs})")

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
        return (
            f"early stopping mo-asha at epochs {rungs} of {self.training.epochs}, the best 1/{self.eta} go on "
            "(--early-stop none: train every trial to the end)"
        )

    def stopping_rule(self):
        """The early-stopping rule of this run, or None."""
        if not self.stops_early:
            return None
        from search.evaluation.data import num_classes_of
        from search.strategies.early_stopping import MultiObjectiveASHA

        senses = [OBJECTIVE_SENSES[o] for o in self.objectives]
        return MultiObjectiveASHA(
            self.min_epochs,
            self.eta,
            self.training.epochs,
            senses,
            chance_level=1 / num_classes_of(self.training.dataset),
            accuracy_index=self.objectives.index("accuracy"),
        )

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
