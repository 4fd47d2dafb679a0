"""Latency of a candidate's deployed model, measured or predicted from a per-layer table.

Latency does not depend on trained weights (the deployed layers have the same shapes
whatever the weights), so it is known before training, like FLOPs, and a FLOPs-style
ceiling or the sampler can use it at once.

- ``measured``: the deployed model is timed on the trial's device (warm-up, then the median
  of repeated runs). Exact for that device, but noisy and ~a second per candidate.
- ``table``: a per-device lookup table of every searchable layer's deployed latency for
  every choice of the space, built once and cached in the results folder; a candidate's
  latency is the sum of its layers, each deployed alone (an FLGC layer alone keeps both its
  gathers or goes dense, whichever is faster), calibrated on whole models (see LatencyTable).
  Deterministic and instant, but blind to which gathers fold away between neighbouring
  layers; ``bench/latency_table.py`` measures its prediction error and rank correlation
  against measured latency (figures in docs/latency.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from layers import create_conv2d
from layers.timing import median_ms
from models import Architecture, LayerSlot, LayerSpec, build_model, deploy
from search.files import atomic_write_text
from spaces import SearchSpace

__all__ = ["LatencyTable", "device_key", "measure_latency", "model_latency_ms"]


@torch.inference_mode()
def measure_latency(run: Callable[[], Any], device: torch.device, warmup: int = 5, repeats: int = 20) -> float:
    """Median wall-clock milliseconds of ``run()`` after ``warmup`` calls (no autograd)."""
    return median_ms(run, device, warmup, repeats)


def _prepare(module: nn.Module, device: torch.device) -> nn.Module:
    # channels_last is the fast layout for convolutions on current CPUs and GPUs.
    return module.to(device, memory_format=torch.channels_last).eval()


def model_latency_ms(
    arch: Architecture, device: torch.device, batch: int = 1, warmup: int = 5, repeats: int = 20
) -> float:
    """Measured latency of ``arch``'s deployed model for one batch of 32x32 images."""
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(arch).to(device)
        model = deploy(model, hetconv_form="auto", flgc_form="auto", example_input=x)  # the fastest exact forms here
    model = _prepare(model, device)
    return measure_latency(lambda: model(x), device, warmup, repeats)


def _layer_latency_ms(slot: LayerSlot, spec: LayerSpec, device: torch.device, batch: int, repeats: int) -> float:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layer = create_conv2d(slot.in_channels, slot.out_channels, slot.kernel_size, slot.stride, **spec.conv_kwargs())
    x = torch.randn(batch, slot.in_channels, slot.input_size, slot.input_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    wrapped = deploy(nn.Sequential(layer).to(device), hetconv_form="auto", flgc_form="auto", example_input=x)
    wrapped = _prepare(wrapped, device)
    return measure_latency(lambda: wrapped(x), device, warmup=3, repeats=repeats)


def _fit_line(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x`` with ``a >= 0`` and ``b > 0``, so that no prediction can
    be negative: a negative intercept (noisy timings on a busy machine) is refitted through
    the origin; without a positive slope, ``b = 1`` through the first point."""
    try:
        slope, intercept = statistics.linear_regression(x, y)
    except statistics.StatisticsError:  # fewer than two points, or all x equal
        slope, intercept = 0.0, 0.0
    if slope > 0 and intercept < 0:
        slope, intercept = statistics.linear_regression(x, y, proportional=True).slope, 0.0
    if slope > 0:
        return intercept, slope
    return max(y[0] - x[0], 0.0), 1.0


def device_key(device: torch.device) -> str:
    """Names the hardware a table was measured on (tables do not transfer between devices)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()}-{torch.get_num_threads()}threads"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{device.type}-{name}")


class LatencyTable:
    """Per-layer latencies of a space on one device; predicts a candidate as
    ``fixed_ms + scale * (sum of its layers)``.

    Layers timed alone do not add up to the model (per-call overheads, caches, the gathers
    that fold away between neighbours), so the table is calibrated on whole models measured
    when it is built: the dense model and every uniform configuration of the space, fitted by
    least squares (``scale`` > 0; without two distinct points, ``scale`` = 1 and ``fixed_ms``
    is the dense model minus its layers). The calibration moves every prediction alike: the
    order of candidates, which is all a sampler uses, comes from the layers.

    Example:
        >>> from spaces import get_space
        >>> space = get_space("vgg_hetconv", width=0.25)
        >>> table = LatencyTable.build(space, torch.device("cpu"), repeats=3)  # doctest: +SKIP
        >>> table.predict(space.uniform("4"), space.slots)  # doctest: +SKIP
    """

    def __init__(
        self, key: dict[str, Any], fixed_ms: float, layers: dict[str, dict[str, float]], scale: float = 1.0
    ) -> None:
        self.key = key
        self.fixed_ms = fixed_ms
        self.scale = scale
        self.layers = layers  # slot name -> choice label -> ms

    @staticmethod
    def table_key(space: SearchSpace, device: torch.device, batch: int) -> dict[str, Any]:
        return {
            "format": 4,
            "device": device_key(device),
            "model": space.model,
            "width": space.width,
            "num_classes": space.num_classes,
            "batch": batch,
            "torch": torch.__version__,
        }

    @classmethod
    def build(cls, space: SearchSpace, device: torch.device, batch: int = 1, repeats: int = 20) -> LatencyTable:
        dense = LayerSpec.dense()
        layers = {  # dense too: the dense model is the reference point of every study
            slot.name: {
                spec.label: _layer_latency_ms(slot, spec, device, batch, repeats)
                for spec in dict.fromkeys((dense, *options))
            }
            for slot, options in zip(space.slots, space.choices)
        }
        table = cls(cls.table_key(space, device, batch), 0.0, layers)
        calibration = dict.fromkeys([space.dense(), *(space.uniform(v) for v in space.uniform_values())])
        sums = [table.layer_sum(arch, space.slots) for arch in calibration]
        measured = [model_latency_ms(arch, device, batch, repeats=repeats) for arch in calibration]
        table.fixed_ms, table.scale = _fit_line(sums, measured)
        return table

    @classmethod
    def _read_cached(cls, path: Path, space: SearchSpace) -> LatencyTable | None:
        """The table in ``path`` if it is whole (every choice of every layer, finite numbers),
        else None: a cache that was truncated or edited is built again, not trusted."""
        try:
            data = json.loads(path.read_text())
            table = cls(data["key"], float(data["fixed_ms"]), data["layers"], float(data["scale"]))
            needed = [(slot.name, spec.label) for slot, c in zip(space.slots, space.choices) for spec in c]
            values = [float(table.layers[name][label]) for name, label in needed]
        except (OSError, ValueError, TypeError, KeyError, AttributeError):  # ValueError: JSON, float
            return None
        numbers = [table.fixed_ms, table.scale, *values]
        return table if all(math.isfinite(v) for v in numbers) else None

    def layer_sum(self, arch: Architecture, slots: list[LayerSlot] | tuple[LayerSlot, ...]) -> float:
        return sum(self.layers[slot.name][spec.label] for slot, spec in zip(slots, arch.layers))

    def predict(self, arch: Architecture, slots: list[LayerSlot] | tuple[LayerSlot, ...]) -> float:
        return self.fixed_ms + self.scale * self.layer_sum(arch, slots)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "fixed_ms": self.fixed_ms, "scale": self.scale, "layers": self.layers}

    @classmethod
    def cached(
        cls, space: SearchSpace, device: torch.device, batch: int, folder: Path, repeats: int = 20
    ) -> LatencyTable:
        """Load the table for this space/device/batch from ``folder``, building it if absent."""
        key = cls.table_key(space, device, batch)
        digest = hashlib.sha256(json.dumps({**key, "choices": space.fingerprint()["choices"]}, sort_keys=True).encode())
        path = folder / f"{space.model}-w{space.width:g}-b{batch}-{key['device']}-{digest.hexdigest()[:10]}.json"
        if path.exists():
            loaded = cls._read_cached(path, space)
            if loaded is not None:
                return loaded
        table = cls.build(space, device, batch, repeats)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(table.to_json(), indent=1))
        return table
