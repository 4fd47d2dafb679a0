"""Training and evaluation of one candidate network.

The recipe: SGD with Nesterov momentum, a cosine learning-rate schedule after a linear
warm-up (stepped per batch), weight decay except on FLGC assignment logits, biases and
BatchNorm, random crop + flip, optional label smoothing. On CUDA: mixed precision and
channels_last; on CPU: float32. A loss that becomes NaN or infinite stops the run within a
few steps with that reason (:class:`TrialFailed`) instead of wasting its remaining epochs.

No step waits on the device: the loss is summed on the device and its finiteness copied to
the host asynchronously every few steps (:class:`NonFiniteWatch`); the host reads it once the
copy has landed, and once per epoch for the epoch's mean loss. (With float16 autocast, on
GPUs without bfloat16, the gradient scaler still checks for overflow once per step.) On CUDA
the step can be captured as a CUDA graph and replayed (``cuda_graphs``,
:mod:`search.evaluation.step`), exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from layers import param_groups_without_logit_decay
from search.evaluation.data import BatchLoader, Dataset
from search.evaluation.step import StepRunner, TrainingSetup, training_step
from search.files import atomic_torch_save
from search.settings import TrainingSettings

__all__ = [
    "CHECK_EVERY",
    "EpochRecord",
    "NonFiniteWatch",
    "StepRunner",
    "TrainingSetup",
    "TrialFailed",
    "evaluate_loader",
    "prepare_training",
    "train_model",
    "training_step",
]

# Steps between looks at the running loss: a NaN stops training at most ~2 x this many
# steps after it appears, and the GPU never drains its queue for the look.
CHECK_EVERY = 10


class TrialFailed(RuntimeError):
    """Training of a candidate failed for a reason worth recording (e.g. NaN loss)."""


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    seconds: float  # wall-clock time of this epoch (training + validation)

    def to_json(self) -> dict:
        return asdict(self)


# Called after every epoch; returning True stops training early (used by early stopping).
EpochCallback = Callable[[EpochRecord], bool | None]


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up to ``base_lr`` then cosine decay to 0."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class NonFiniteWatch:
    """Tells whether a running loss sum went NaN or infinite without waiting on the device.

    Every ``every`` steps, :meth:`check` starts a non-blocking copy of the sum's finiteness
    to the host and looks at the copy started the time before, if the device has finished it
    (a CUDA event says so without waiting). On the CPU the copy is immediate. A non-finite
    loss makes the sum non-finite for good, so a late look still sees it.
    """

    def __init__(self, device: torch.device, every: int = CHECK_EVERY) -> None:
        self.every = every
        self.device = device
        self._pending: list[tuple[torch.Tensor, torch.cuda.Event | None, int]] = []

    def check(self, running_sum: torch.Tensor, step: int) -> int | None:
        """The step at whose look the sum was first seen non-finite, else None."""
        if step % self.every == 0:
            finite = torch.isfinite(running_sum.detach())
            if self.device.type == "cuda":
                host = torch.empty((), dtype=torch.bool, pin_memory=True)
                host.copy_(finite, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                self._pending.append((host, event, step))
            else:
                self._pending.append((finite, None, step))
        while self._pending and (self._pending[0][1] is None or self._pending[0][1].query()):
            host, _, looked_at = self._pending.pop(0)
            if not bool(host):  # on the host already: no wait
                self._pending.clear()
                return looked_at
        return None


@torch.no_grad()
def evaluate_loader(
    model: nn.Module, loader: BatchLoader, autocast_dtype: torch.dtype | None = None
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``loader`` (eval mode); the sums stay
    on the device until the end, so the batches run without waiting on the host."""
    model.eval()
    total_loss = correct = None
    count = 0
    for images, labels in loader:
        with torch.autocast(images.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(images)
        batch_loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        batch_correct = (logits.argmax(dim=1) == labels).sum()
        total_loss = batch_loss if total_loss is None else total_loss + batch_loss
        correct = batch_correct if correct is None else correct + batch_correct
        count += labels.numel()
    if total_loss is None:
        return 0.0, 0.0
    return total_loss.item() / max(count, 1), correct.item() / max(count, 1)


def prepare_training(
    model: nn.Module, data: Dataset, training: TrainingSettings, seed: int, device: torch.device
) -> TrainingSetup:
    """Seed, move ``model`` to ``device`` (channels_last on CUDA), and build the augmenting
    training loader, the SGD optimizer (no decay on FLGC logits, biases, BatchNorm) and the
    mixed-precision scaler of the recipe."""
    torch.manual_seed(seed)
    autocast_dtype = amp_dtype(device, training.amp)
    channels_last = training.channels_last and device.type == "cuda"
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loader = BatchLoader(
        data.train_images,
        data.train_labels,
        batch_size=training.batch_size,
        device=device,
        train=True,
        mean=data.mean,
        std=data.std,
        hflip=data.hflip,
        seed=seed,
        channels_last=channels_last,
        pin_memory=device.type == "cuda",
    )
    # On CUDA the fused SGD kernel updates every parameter in a few launches (same update).
    optimizer = torch.optim.SGD(
        param_groups_without_logit_decay(model, training.weight_decay),
        lr=training.lr,
        momentum=training.momentum,
        nesterov=training.momentum > 0,
        fused=True if device.type == "cuda" else None,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
    return TrainingSetup(autocast_dtype, channels_last, loader, optimizer, scaler)


def train_model(
    model: nn.Module,
    data: Dataset,
    training: TrainingSettings,
    seed: int,
    device: torch.device,
    on_epoch: EpochCallback | None = None,
    evaluate_on: str = "val",
    checkpoint: Path | None = None,
    checkpoint_every: int = 0,
) -> list[EpochRecord]:
    """Train ``model`` in place with the recipe of ``training``; evaluate after every epoch on
    the ``val`` split (search) or the ``test`` split (final retraining).

    With ``checkpoint`` and ``checkpoint_every`` K, the whole training state (weights,
    optimizer, scaler, step, curve, data-order and RNG states) is saved every K epochs, and a
    run that finds the file resumes after its last saved epoch: on a CPU the result is the
    same as an uninterrupted run. The file is removed when training ends.
    """
    setup = prepare_training(model, data, training, seed, device)
    autocast_dtype, channels_last, train_loader = setup.autocast_dtype, setup.channels_last, setup.loader
    optimizer, scaler = setup.optimizer, setup.scaler
    eval_images, eval_labels = (
        (data.val_images, data.val_labels) if evaluate_on == "val" else (data.test_images, data.test_labels)
    )
    eval_loader = None
    if eval_labels.numel():
        eval_loader = BatchLoader(
            eval_images,
            eval_labels,
            batch_size=max(256, training.batch_size),
            device=device,
            train=False,
            mean=data.mean,
            std=data.std,
            channels_last=channels_last,
        )
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * training.epochs
    warmup_steps = int(round(training.warmup_epochs * steps_per_epoch))
    watch = NonFiniteWatch(device)
    runner = StepRunner(model, setup, training.label_smoothing, training.cuda_graphs, device)
    history: list[EpochRecord] = []
    step = 0
    first_epoch = 1
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        train_loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"])
        step, first_epoch = state["step"], state["epoch"] + 1
        history = [EpochRecord(**record) for record in state["history"]]
    for epoch in range(first_epoch, training.epochs + 1):
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        for images, labels in train_loader:
            lr = lr_at(step, total_steps, warmup_steps, training.lr)
            runner.set_lr(lr)
            loss_sum += runner(images, labels)  # a replayed step's loss is the graph's: add it now
            bad_at = watch.check(loss_sum, step)
            if bad_at is not None:
                raise TrialFailed(f"loss became {loss_sum.item()} at epoch {epoch}, by step {bad_at + 1}")
            step += 1
        runner.sync()  # the model as the host sees it is current again (after replays)
        train_loss = loss_sum.item() / max(steps_per_epoch, 1)
        if not math.isfinite(train_loss):
            raise TrialFailed(f"loss became {train_loss} in epoch {epoch}")
        val_loss, val_accuracy = evaluate_loader(model, eval_loader, autocast_dtype) if eval_loader else (None, None)
        record = EpochRecord(epoch, train_loss, val_loss, val_accuracy, lr, time.perf_counter() - started)
        history.append(record)
        if (
            checkpoint is not None
            and checkpoint_every > 0
            and epoch % checkpoint_every == 0
            and epoch < training.epochs
        ):
            _save_checkpoint(checkpoint, model, optimizer, scaler, train_loader, step, epoch, history)
        if on_epoch is not None and on_epoch(record):
            break
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    return history


def _save_checkpoint(path: Path, model, optimizer, scaler, loader, step: int, epoch: int, history) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "loader": loader.state_dict(),
        "rng": torch.get_rng_state(),
        "step": step,
        "epoch": epoch,
        "history": [record.to_json() for record in history],
    }
    atomic_torch_save(state, path)  # a kill while saving never leaves a torn checkpoint
