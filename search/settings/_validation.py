"""The validation table: every numeric option and config field has ONE rule here, every named
choice one entry. The CLI parses with it, and Settings / TrainingSettings check with it (so
values from code or exported configs too). A new numeric option is one line in NUMBERS; a
new named choice one entry in CHOICES."""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from typing import Any

from search.settings._options import (
    BACKENDS,
    CUDA_GRAPH_MODES,
    DATASETS,
    EARLY_STOP_MODES,
    LATENCY_MODES,
    PRESETS,
    SAMPLERS,
    STRATEGIES,
)

__all__ = [
    "CHOICES",
    "INT_MAX",
    "NUMBERS",
    "SEED_MAX",
    "Number",
    "SettingsError",
    "check_choice",
    "check_device",
    "check_number",
    "check_ray_address",
    "check_study_name",
    "check_text",
    "option_name",
]


class SettingsError(ValueError):
    """A user-facing problem with the options."""


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
        # An int beyond float's range is no number any option can use (and math.isfinite
        # would raise OverflowError on it: a traceback for --budget 1000...0).
        if isinstance(value, int) and abs(value) > sys.float_info.max:
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
    "confirm": Number(int, 0, 10),  # more runs per front configuration: 11 runs is more than any noise needs
    "race": Number(int, 0, 20),  # runs beyond --confirm's for an unresolved member: 31 in all at most
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

# Named choices: the values each may take.
CHOICES: dict[str, tuple[str, ...]] = {
    "sampler": SAMPLERS,
    "backend": BACKENDS,
    "latency": LATENCY_MODES,
    "strategy": STRATEGIES,
    "early_stop": EARLY_STOP_MODES,
    "preset": tuple(PRESETS),
    "dataset": DATASETS,
    "cuda_graphs": CUDA_GRAPH_MODES,
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
    if value not in options:
        name = f"{where}{field_name}" if where else option_name(field_name)
        raise SettingsError(f"unknown {name} {value!r}; use one of {', '.join(options)}")


def check_device(value: Any, where: str = "") -> None:
    """The form of a device name (whether this machine has it: :func:`check_device_available`)."""
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
    if len(value.encode("utf-8", "surrogateescape")) > 200:  # file systems allow 255 bytes per name
        raise SettingsError(f"{option} {value!r:.60} is over 200 bytes in UTF-8 (it is also a folder name); shorten it")


def check_ray_address(value: Any) -> None:
    """``--address``: auto, local or HOST:PORT (None: start a local Ray)."""
    if value is not None and not _RAY_ADDRESS.fullmatch(str(value)):
        raise SettingsError(f"--address must be auto or HOST:PORT (e.g. 10.0.0.1:6379), got {value!r:.80}")
