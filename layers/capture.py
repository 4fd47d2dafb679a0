"""Whether a module's training step can be captured as a CUDA graph and replayed.

A replay re-runs the recorded kernels and nothing else: Python that runs in a step does not.
A layer whose step depends on host-side state that changes from step to step (a step
counter, a choice drawn per step) would keep the captured step's behaviour forever, so it
says so through a ``capture_blocker()`` method, and :func:`capture_blocker` asks every layer
of a module.
"""

from __future__ import annotations

from torch import nn

__all__ = ["capture_blocker"]


def capture_blocker(module: nn.Module) -> str | None:
    """The first reason a layer of ``module`` gives why its training step cannot be replayed
    from a CUDA graph, or None."""
    for m in module.modules():
        ask = getattr(m, "capture_blocker", None)
        reason = ask() if callable(ask) else None
        if reason:
            return reason
    return None
