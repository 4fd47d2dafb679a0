"""Timing a call on a device: the one timer the layers, deployment and latency code share.

CUDA runs asynchronously, so the device is synchronised after the warm-up and after every
timed call (and only there: timing is the one place the tool waits on the GPU on purpose).
The median is reported because a shared machine's timings have long upper tails.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["median_ms"]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(run: Callable[[], Any], device: torch.device, warmup: int = 2, repeats: int = 7) -> float:
    """Median wall-clock milliseconds of ``run()`` over ``repeats`` calls after ``warmup`` calls.

    >>> median_ms(lambda: sum(range(100)), torch.device("cpu"), warmup=1, repeats=3) >= 0
    True
    """
    for _ in range(warmup):
        run()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        _synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
