"""One training step of the recipe, eager or replayed from a captured CUDA graph.

At CIFAR scale a GPU step is bound by the host issuing kernels, not by their work. A CUDA
graph records the kernels of one fixed-shape step (forward, backward, the fused optimizer)
once and replays them with one launch, so the host's part goes away (the kernels stay).
Capture costs a few steps, little against a trial of minutes.

:class:`StepRunner` runs each step. ``--cuda-graphs`` chooses how:

- ``off``: eager, always.
- ``on``: capture at the first full batch wherever the step can be captured
  (:func:`capture_blocker` says why not: not CUDA, float16 loss scaling, which checks for
  overflow on the host, or a layer with per-step host state), and replay it.
- ``auto`` (default): as ``on``, but only keep the graph if its replay measures faster than
  the eager step on that first batch (median of a few of each).

The replay is exact against the eager step: the same kernels on the same memory. Warm-up and
timing run real steps, so the model's and optimizer's state is saved before and restored
after them; a batch of another shape (the last partial one, where the loader keeps it) runs
eagerly, and before any eager use of the model after replays (that batch, evaluation) what
layers cache on their parameters' version counters is forgotten, since a replay writes the
parameters on the GPU without the host seeing it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from layers import capture_blocker as layer_capture_blocker
from layers import forget_assignments
from layers.timing import median_ms
from search.evaluation.data import BatchLoader

__all__ = ["GRAPH_WARMUP", "StepRunner", "TrainingSetup", "capture_blocker", "keep_graph", "training_step"]

GRAPH_WARMUP = 3  # eager steps on a side stream before capture (lazy initialisation, cuDNN's choices)
TIMED_STEPS = 5  # of each kind, for the ``auto`` choice


@dataclass
class TrainingSetup:
    """What one training run needs, the same for a stand-alone model and the supernet."""

    autocast_dtype: torch.dtype | None
    channels_last: bool
    loader: BatchLoader | None  # None: steps on the caller's own batches (benchmarks)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def training_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    setup: TrainingSetup,
    label_smoothing: float = 0.0,
    autocast_cache: bool = True,
) -> torch.Tensor:
    """One step of the recipe (forward under autocast, backward, optimizer and scaler step);
    returns the detached loss, on the device: nothing here waits for the GPU.
    (``autocast_cache=False`` inside a CUDA-graph capture, as PyTorch asks.)"""
    with torch.autocast(
        images.device.type,
        dtype=setup.autocast_dtype,
        enabled=setup.autocast_dtype is not None,
        cache_enabled=autocast_cache,
    ):
        loss = F.cross_entropy(model(images).float(), labels, label_smoothing=label_smoothing)
    setup.optimizer.zero_grad(set_to_none=True)
    setup.scaler.scale(loss).backward()
    setup.scaler.step(setup.optimizer)
    setup.scaler.update()
    return loss.detach()


def capture_blocker(model: nn.Module, setup: TrainingSetup, device: torch.device) -> str | None:
    """Why the training step of ``model`` cannot be captured as a CUDA graph, or None."""
    if device.type != "cuda":
        return f"not on CUDA ({device.type})"
    if setup.scaler.is_enabled():
        return "float16 loss scaling checks for overflow on the host every step"
    return layer_capture_blocker(model)


def keep_graph(mode: str, eager_ms: float | None, replay_ms: float | None) -> bool:
    """The rule: ``on`` keeps a captured graph, ``auto`` where its replay measured faster than
    the eager step, ``off`` never (nor where either time is missing)."""
    if mode == "on":
        return True
    return mode == "auto" and eager_ms is not None and replay_ms is not None and replay_ms < eager_ms


class StepRunner:
    """Runs the steps of one training run: eagerly, or by replaying the step captured at the
    first full batch (see the module docstring). ``note`` says which and why, once decided.

    The loss a replay returns is the graph's own tensor: add it up before the next step.
    """

    def __init__(
        self,
        model: nn.Module,
        setup: TrainingSetup,
        label_smoothing: float = 0.0,
        mode: str = "off",
        device: torch.device | None = None,
    ) -> None:
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"unknown CUDA-graph mode {mode!r}; use auto, on or off")
        self.model, self.setup, self.label_smoothing, self.mode = model, setup, label_smoothing, mode
        device = device or next(model.parameters()).device
        blocker = "off" if mode == "off" else capture_blocker(model, setup, device)
        self.note = f"eager: {blocker}" if blocker else "undecided"
        self.decided = blocker is not None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # images, labels, loss
        self._replayed = False

    @property
    def replaying(self) -> bool:
        return self._graph is not None

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next step (a device tensor the graph reads, once captured)."""
        for group in self.setup.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not self.decided:
            self._decide(images, labels)
        static = self._static
        if self._graph is not None and static is not None and _same_layout(static[0], images):
            static[0].copy_(images)
            static[1].copy_(labels)
            self._graph.replay()
            self._replayed = True
            return static[2]
        self.sync()
        return self._eager(images, labels)

    def sync(self) -> None:
        """Make the host's view of the model current after replays (before eager use of it:
        evaluation, checkpoints, a batch of another shape)."""
        if self._replayed:
            forget_assignments(self.model)
            self._replayed = False

    def _eager(self, images: torch.Tensor, labels: torch.Tensor, autocast_cache: bool = True) -> torch.Tensor:
        return training_step(self.model, images, labels, self.setup, self.label_smoothing, autocast_cache)

    def _decide(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Capture the step at this batch (and, for ``auto``, time it against the eager step),
        from the state it had before, to which it returns."""
        self.decided = True
        state = _TrainingState(self.model, self.setup.optimizer)
        eager_ms = replay_ms = None
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP):
                    self._eager(images, labels)
            torch.cuda.current_stream().wait_stream(side)
            if self.mode == "auto":
                eager_ms = median_ms(lambda: self._eager(images, labels), images.device, 1, TIMED_STEPS)
            _lr_to_tensors(self.setup.optimizer, images.device)
            state.restore()
            self._capture(images, labels)
            if self.mode == "auto":
                replay_ms = median_ms(lambda: self(images, labels), images.device, 1, TIMED_STEPS)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:  # capture is refused: train eagerly
            self._graph = self._static = None
            self.note = f"eager: capture failed ({str(error).splitlines()[0][:120]})"
        state.restore()
        forget_assignments(self.model)
        if self._graph is not None and keep_graph(self.mode, eager_ms, replay_ms):
            timing = f" (step {replay_ms:.2f} ms replayed, {eager_ms:.2f} ms eager)" if eager_ms else ""
            self.note = f"graph{timing}"
        else:
            if self._graph is not None:
                self.note = f"eager: faster ({eager_ms:.2f} ms, replayed {replay_ms:.2f} ms)"
            self._graph = self._static = None
            _lr_to_floats(self.setup.optimizer)

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        static_images, static_labels = images.clone(), labels.clone()
        forget_assignments(self.model)  # so that the captured step solves the assignments
        self.setup.optimizer.zero_grad(set_to_none=True)  # gradients allocated from the graph's pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = self._eager(static_images, static_labels, autocast_cache=False)
        self._graph, self._static = graph, (static_images, static_labels, loss)


class _TrainingState:
    """The values of a model's parameters and buffers and of an optimizer's state, saved to be
    put back in place (same tensors: a captured graph reads and writes their memory). State
    the optimizer creates meanwhile (momentum buffers of a first step) is put back as zeros,
    which SGD's update treats as its first step does. Not saved: buffers a layer replaces
    instead of writing (FLGC's last groups, which only the CPU's host loop reads) and the
    random state (the recipe's models draw no random numbers in a step)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.tensors = [(t, t.detach().clone()) for t in (*model.parameters(), *_buffers(model))]
        self.state = {
            (p, k): v.detach().clone()
            for p, s in optimizer.state.items()
            for k, v in s.items()
            if isinstance(v, torch.Tensor)
        }

    @torch.no_grad()
    def restore(self) -> None:
        for tensor, value in self.tensors:
            tensor.copy_(value)
        for p, s in self.optimizer.state.items():
            for k, v in s.items():
                if isinstance(v, torch.Tensor) and (p, k) in self.state:
                    v.copy_(self.state[(p, k)])
                elif isinstance(v, torch.Tensor):
                    v.zero_()
        for p in self.model.parameters():
            p.grad = None


def _buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b for b in model.buffers() if b is not None]


def _same_layout(static: torch.Tensor, batch: torch.Tensor) -> bool:
    return static.shape == batch.shape and static.dtype == batch.dtype and static.stride() == batch.stride()


def _lr_to_tensors(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """The learning rates as device tensors, so that a captured step reads each step's."""
    for group in optimizer.param_groups:
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)


def _lr_to_floats(optimizer: torch.optim.Optimizer) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = float(group["lr"].item())
