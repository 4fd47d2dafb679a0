"""Timing helpers shared by ``bench/layers.py`` and ``bench/models.py``.

Rules (so that numbers from a shared, noisy CPU still mean something):

- every reported time is the **median** of repeated samples taken after warm-up; a sample
  times enough back-to-back calls to last at least ``min_sample_ms`` (small layers at batch 1
  run in microseconds);
- the candidates of one comparison (one shape, batch and mode) are measured **round-robin**,
  one sample of each in turn, so that load from other jobs hits them alike;
- inference runs under ``torch.inference_mode()``; a training step is forward + backward +
  ``SGD.step()``;
- only **ratios within one run** are compared (reference: dense of the same shape in its
  faster memory format, measured in the same round-robin); absolute times are reported but
  never asserted.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "MEMORY_FORMATS",
    "Candidate",
    "add_common_arguments",
    "add_ratios",
    "default_out",
    "environment",
    "inference_fn",
    "load_warning",
    "measure_round_robin",
    "parse_formats",
    "print_table",
    "setup_threads",
    "summary_rows",
    "train_step_fn",
    "write_csv",
]

MEMORY_FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def add_common_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--quick", action="store_true", help="few shapes, few repeats: a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="timed samples per candidate (median reported)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per candidate before sampling")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: 2)")
    parser.add_argument(
        "--formats", default="nchw,channels_last", help="memory formats to measure (default: nchw,channels_last)"
    )
    parser.add_argument("--out", default=None, help=f"CSV path (default: results/bench/{name}_<time>.csv)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (default: 0)")


def parse_formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in MEMORY_FORMATS]
    if unknown or not formats:
        raise SystemExit(f"error: unknown memory format(s) {unknown}; use {', '.join(MEMORY_FORMATS)}")
    return formats


def setup_threads(threads: int) -> None:
    """Torch intra-op threads; denormals flushed so that tiny activations cannot slow a form."""
    torch.set_num_threads(max(1, threads))
    torch.set_flush_denormal(True)


def default_out(name: str) -> Path:
    return Path("results") / "bench" / f"{name}_{datetime.now().strftime('%Y%m%d-%H%M%S')}.csv"


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_start": round(os.getloadavg()[0], 2),
    }


def load_warning() -> str | None:
    """A warning when other jobs keep the cores busy. With more than one torch thread, an
    OpenMP parallel region then waits for whichever thread the OS descheduled: measured here, a
    0.4 ms convolution took ~30 ms with 2 threads while one other process ran (1 thread: 0.45
    ms). Such numbers say nothing about the layers."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    threads = torch.get_num_threads()
    if threads > 1 and load > cores - threads + 0.5:
        return (
            f"warning: load average {load:.1f} on {cores} cores: other jobs are running, and with {threads} "
            "torch threads OpenMP waits on descheduled threads (times can be 10-100x off, unevenly); "
            "use --threads 1 on a shared machine"
        )
    return None


# ---------------------------------------------------------------------------
# what gets timed
# ---------------------------------------------------------------------------


def to_format(module: nn.Module, x: torch.Tensor, memory_format: str) -> tuple[nn.Module, torch.Tensor]:
    """A private copy of ``module`` and ``x`` in ``memory_format`` (``Module.to`` works in place,
    and a training step changes weights: candidates must not share modules)."""
    fmt = MEMORY_FORMATS[memory_format]
    x = x.clone()
    if x.dim() == 4:
        x = x.contiguous(memory_format=fmt)
    return copy.deepcopy(module).to(memory_format=fmt), x


def inference_fn(module: nn.Module, x: torch.Tensor, memory_format: str = "nchw") -> Callable[[], Any]:
    """One inference call of ``module`` (eval mode) on ``x`` in ``memory_format``."""
    module, x = to_format(module, x, memory_format)
    module.eval()

    def run() -> Any:
        with torch.inference_mode():
            return module(x)

    return run


def train_step_fn(
    module: nn.Module,
    x: torch.Tensor,
    memory_format: str = "nchw",
    target: torch.Tensor | None = None,
    input_grad: bool = False,
    lr: float = 1e-4,
) -> Callable[[], Any]:
    """One training step: forward, loss, backward, ``SGD.step()`` (momentum 0.9).

    ``target`` (class indices): cross-entropy loss, as for a whole model; otherwise the mean
    square of the output, as for a single layer, where ``input_grad=True`` also computes the
    gradient of the input (what a layer inside a network must do)."""
    module, x = to_format(module, x, memory_format)
    module.train()
    if input_grad:
        x = x.detach().requires_grad_(True)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9) if params else None

    def run() -> Any:
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        if input_grad:
            x.grad = None
        out = module(x)
        loss = nn.functional.cross_entropy(out, target) if target is not None else out.square().mean()
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        return loss

    return run


# ---------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------


@dataclass
class Candidate:
    """One thing to time: a zero-argument callable and the row fields that describe it."""

    fn: Callable[[], Any]
    row: dict[str, Any]
    repeats: int | None = None  # own (smaller) number of samples, e.g. for a slow reference
    samples: list[float] = field(default_factory=list)  # ms per call
    calls: int = 1  # calls per sample

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan


def _time_calls(fn: Callable[[], Any], calls: int, sync: Callable[[], Any] | None = None) -> float:
    if sync is not None:
        sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if sync is not None:
        sync()
    return (time.perf_counter() - start) * 1e3 / calls


def measure_round_robin(
    candidates: Sequence[Candidate],
    repeats: int,
    warmup: int,
    min_sample_ms: float = 5.0,
    sync: Callable[[], Any] | None = None,
) -> None:
    """Warm up every candidate, choose how many calls make one sample, then take samples
    round-robin (one per candidate per round) and store them in ``candidate.samples``.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before and after every sample, so that a
    sample of asynchronous GPU work times the work, not its launch."""
    for c in candidates:
        for _ in range(max(1, warmup)):
            first = _time_calls(c.fn, 1, sync)
        c.calls = 1 if first >= min_sample_ms else min(1000, math.ceil(min_sample_ms / max(first, 1e-3)))
    rounds = max([repeats] + [c.repeats or 0 for c in candidates])
    for r in range(rounds):
        for c in candidates:
            if r < (c.repeats or repeats):
                c.samples.append(_time_calls(c.fn, c.calls, sync))


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return "" if value is None else str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    if title:
        print(title)
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths)))


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def write_csv(rows: Sequence[dict[str, Any]], path: Path, first_columns: Sequence[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(first_columns) + sorted({k for r in rows for k in r} - set(first_columns))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return path


def add_ratios(rows: list[dict[str, Any]], group_keys: Sequence[str], is_reference: Callable[[dict], bool]) -> None:
    """Set ``latency_ratio`` (latency / reference latency) and ``reference_ms`` on every row:
    the reference of a group (rows equal on ``group_keys``) is the fastest row for which
    ``is_reference`` holds (dense, in its faster memory format). Also mark each form's faster
    memory format with ``fastest_format``."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in group_keys), []).append(r)
    for members in groups.values():
        refs = [r["latency_ms"] for r in members if is_reference(r) and not math.isnan(r["latency_ms"])]
        reference = min(refs) if refs else math.nan
        by_form: dict[tuple, list[dict[str, Any]]] = {}
        for r in members:
            r["reference_ms"] = reference
            r["latency_ratio"] = r["latency_ms"] / reference if reference == reference else math.nan
            by_form.setdefault((r.get("kind"), r.get("form"), r.get("param"), r.get("model")), []).append(r)
        for same in by_form.values():
            best = min(same, key=lambda r: (math.isnan(r["latency_ms"]), r["latency_ms"]))
            for r in same:
                r["fastest_format"] = r is best


def summary_rows(rows: Sequence[dict[str, Any]], key_columns: Sequence[str]) -> list[dict[str, Any]]:
    """One row per form (its faster memory format), with each format's time beside it."""
    out = []
    for r in rows:
        if not r.get("fastest_format"):
            continue
        s = dict(r)
        for other in rows:
            if all(other.get(k) == r.get(k) for k in key_columns):
                s[f"ms_{other['memory_format']}"] = other["latency_ms"]
        out.append(s)
    return out
