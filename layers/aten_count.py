"""Counting the aten calls of a training step on the GPU code path, without a GPU.

At CIFAR scale a GPU runs each small kernel in a few microseconds and the host needs several
to issue each call, so a training step is bound by how many calls it makes, not by their
work; the calls per step are the figure to keep low. PyTorch's ``meta`` device runs the same
Python and dispatch path as CUDA (it is not ``cpu``, so code that takes a device branch takes
the GPU one) without computing anything, and a ``TorchDispatchMode`` sees every aten call.

:func:`count_training_step` runs one CPU step first (one-off set-up; optional, the counts are
the same without it), moves the model to ``meta``, and counts steps that each follow a
parameter update, so that whatever is cached on the parameters' versions is recomputed as in
training; the first step on ``meta`` is not counted (it may still set things up). A step is the forward and backward of
``model(x).sum()``; the optimizer's update is not counted (a fused optimizer issues a few
calls for the whole model). The count is deterministic, so tests may assert it.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["NO_KERNEL", "AtenCounter", "StepCount", "count_training_step"]

# Calls that launch no kernel on a GPU: views, detach and allocations without a fill.
NO_KERNEL = frozenset(
    {
        "aten.detach", "aten.unsqueeze", "aten.view", "aten.t", "aten.expand", "aten.alias",
        "aten._unsafe_view", "aten.as_strided", "aten.slice", "aten.select", "aten.permute",
        "aten.transpose", "aten.squeeze", "aten.reshape", "aten.empty", "aten.empty_like",
        "aten.empty_strided", "aten.split", "aten.split_with_sizes", "aten.unbind", "aten.flatten",
        "aten.chunk", "aten.narrow", "aten.lift_fresh",
    }
)  # fmt: skip


class AtenCounter(TorchDispatchMode):
    """Counts every aten call made while it is active, by op (``aten.mul``, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


@dataclass(frozen=True)
class StepCount:
    """Aten calls of one training step (forward and backward), averaged over the counted steps."""

    calls: float
    launching: float  # of them, calls that launch a kernel (not in NO_KERNEL)
    by_op: Mapping[str, float]

    @classmethod
    def of(cls, calls: Mapping[str, int], steps: int) -> StepCount:
        by_op = {name: n / steps for name, n in sorted(calls.items())}
        launching = sum(n for name, n in by_op.items() if name not in NO_KERNEL)
        return cls(sum(by_op.values()), launching, by_op)


def count_training_step(
    model: nn.Module, batch: int = 128, steps: int = 2, image_size: int = 32, cpu_step: bool = True
) -> StepCount:
    """Aten calls per training step of ``model`` (in train mode) on the GPU code path, counted
    on the ``meta`` device as described in the module docstring (``cpu_step``: run one CPU
    step first). ``model`` is moved to ``meta``: its values are lost, pass one you do not need.
    """
    model.train()
    if cpu_step:
        model(torch.randn(2, 3, image_size, image_size)).sum().backward()
    model.to("meta")
    x = torch.randn(batch, 3, image_size, image_size, device="meta")
    params = [p for p in model.parameters() if p.requires_grad]
    calls: collections.Counter[str] = collections.Counter()
    for step in range(steps + 1):
        _update(params)
        with AtenCounter() as counter:
            model(x).sum().backward()
        if step:
            calls += counter.calls
    return StepCount.of(calls, steps)


@torch.no_grad()
def _update(params: list[Any]) -> None:
    """A parameter update, as an optimizer step makes one (every version counter moves)."""
    for p in params:
        if p.grad is not None:
            p.add_(p.grad, alpha=-1e-3)
            p.grad = None
