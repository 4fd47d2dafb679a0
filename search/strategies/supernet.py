"""One-shot training and scoring of a weight-sharing supernet over a space's per-layer
HetConv parts / FLGC groups.

One-shot NAS in the style of Once-for-All (Cai et al., arXiv 1908.09791) and BigNAS (Yu et
al., arXiv 2003.11142): every candidate of a :class:`spaces.SearchSpace` is a sub-network of
one supernet whose searchable convolutions (:class:`layers.SuperConv2d`) hold every choice of
their layer with shared weights (the model-level part is :class:`models.WeightSharingModel`;
:class:`Supernet` binds it to a space). The supernet is trained once; a candidate is then
scored in seconds by activating it, recalibrating BatchNorm and evaluating, instead of being
trained.

- **Sandwich rule** (BigNAS): every step trains the largest candidate, the smallest and a few
  random ones, with the gradient of their mean loss in one optimizer step (the mean, not
  the sum, so the stand-alone learning rate fits: summed, 4 sub-networks at the quick
  preset's lr 0.1 never left chance on ``digits32``). The extremes bound the
  space, so training them every step improves all candidates in between.
- **In-place distillation** (OFA, BigNAS): only the largest sees the labels; the others learn
  the largest's (detached) soft predictions of the same batch, which is a better and free
  teacher than the labels for small sub-networks.
- **BatchNorm recalibration**: the running statistics collected during training are a
  mixture over every sampled sub-network and fit none of them, so before evaluating a
  candidate they are recomputed from a few training batches with its weights
  (:func:`recalibrate_bn`).

An activated supernet computes exactly what the stand-alone model with the inherited weights
computes (:meth:`Supernet.extract`), so a chosen candidate can be retrained from those weights.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from layers import SuperConv2d
from models import Architecture, WeightSharingModel
from search.evaluation.cost import slot_macs
from search.evaluation.data import BatchLoader, Dataset
from search.evaluation.train import NonFiniteWatch, TrialFailed, evaluate_loader, lr_at, prepare_training
from search.files import atomic_torch_save
from search.settings import TrainingSettings
from spaces import SearchSpace, SpaceError

__all__ = [
    "SuperConv2d",
    "Supernet",
    "load_supernet",
    "recalibrate_bn",
    "save_supernet",
    "score",
    "train_supernet",
]

_FORMAT = "flgc-hetconv-nas/supernet-1"


class Supernet(WeightSharingModel):
    """The weight-sharing model (:class:`models.WeightSharingModel`) of ``space``: its dense
    model with every searchable conv replaced by a :class:`SuperConv2d` over that layer's
    choices in the space; the largest candidate is active after construction.

    Example:
        >>> from spaces import get_space
        >>> net = Supernet(get_space("vgg_hetconv", width=0.25))
        >>> net.activate(net.smallest())
        >>> net(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__(space.dense(), space.slots, space.choices, error=SpaceError)
        self.space = space
        self.activate(self.largest())

    def check(self, arch: Architecture) -> None:
        """Raise :class:`SpaceError` unless ``arch`` is a candidate of the space."""
        if not self.space.contains(arch):
            raise SpaceError(f"architecture {arch.summary()!r} is not a candidate of space {self.space.name}")

    def _pick(self, choose: Callable[[list[int]], int]) -> Architecture:
        specs = []
        for slot, options in zip(self.space.slots, self.space.choices):
            macs = [slot_macs(slot, spec) for spec in options]
            specs.append(options[macs.index(choose(macs))])
        return Architecture(self.space.model, self.space.width, self.space.num_classes, tuple(specs))

    def largest(self) -> Architecture:
        """Per layer the choice with the most closed-form MACs (first one on ties)."""
        return self._pick(max)

    def smallest(self) -> Architecture:
        """Per layer the choice with the fewest closed-form MACs (first one on ties)."""
        return self._pick(min)


def train_supernet(
    supernet: Supernet,
    data: Dataset,
    training: TrainingSettings,
    seed: int,
    device: torch.device | str,
    *,
    num_random: int = 2,
    on_epoch: Callable[[dict], bool | None] | None = None,
) -> list[dict]:
    """Train ``supernet`` in place with the sandwich rule and in-place distillation.

    Per step: the largest candidate with cross-entropy on the labels (label smoothing from
    ``training``); the smallest and ``num_random`` uniform random candidates with the KL
    divergence to the largest's detached predictions; the gradient of their mean loss, then
    one SGD Nesterov step with train.py's schedule (``lr_at``) and decay groups, so that a
    supernet step is as large as a stand-alone step at the same learning rate. After every epoch the
    largest and smallest are scored (:func:`score`: BN recalibrated, validation accuracy).
    Returns one record per epoch ``{epoch, loss, distill_loss, val_accuracy_largest,
    val_accuracy_smallest, lr, seconds}``; ``on_epoch(record)`` returning True stops.
    """
    if data.num_classes != supernet.space.num_classes:
        raise ValueError(f"data set has {data.num_classes} classes, the supernet {supernet.space.num_classes}")
    device = torch.device(device)
    setup = prepare_training(supernet, data, training, seed, device)
    autocast_dtype, loader, optimizer, scaler = setup.autocast_dtype, setup.loader, setup.optimizer, setup.scaler
    sampler = torch.Generator().manual_seed(seed)
    largest, smallest = supernet.largest(), supernet.smallest()
    total_steps = len(loader) * training.epochs
    warmup_steps = int(round(training.warmup_epochs * len(loader)))
    watch = NonFiniteWatch(device)  # looks every few steps without waiting on the GPU
    history: list[dict] = []
    step = 0
    for epoch in range(1, training.epochs + 1):
        started = time.perf_counter()
        supernet.train()
        loss_sum, distill_sum = torch.zeros((), device=device), torch.zeros((), device=device)
        for images, labels in loader:
            lr = lr_at(step, total_steps, warmup_steps, training.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            losses = []
            candidates = [largest, smallest] + [supernet.sample(sampler) for _ in range(num_random)]
            for i, arch in enumerate(candidates):
                supernet.activate(arch)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    logits = supernet(images).float()
                if i == 0:
                    loss = F.cross_entropy(logits, labels, label_smoothing=training.label_smoothing)
                    teacher = logits.detach().softmax(dim=1)
                else:
                    loss = F.kl_div(logits.log_softmax(dim=1), teacher, reduction="batchmean")
                # The mean over the sandwich, not the sum: one step is then as large as a
                # stand-alone step at the same --lr (the sum of 4 stuck digits32 at chance).
                scaler.scale(loss / len(candidates)).backward()
                losses.append(loss.detach())
            scaler.step(optimizer)
            scaler.update()
            loss_sum += losses[0]
            distill_sum += sum(losses[1:], torch.zeros((), device=device)) / max(len(losses) - 1, 1)
            bad_at = watch.check(loss_sum + distill_sum, step)
            if bad_at is not None:  # name a candidate whose loss is non-finite now, if any
                bad = [
                    f" ({arch.summary()}: {v.item()})" for arch, v in zip(candidates, losses) if not torch.isfinite(v)
                ]
                raise TrialFailed(
                    f"supernet loss became non-finite at epoch {epoch}, by step {bad_at + 1}{(bad or [''])[0]}"
                )
            step += 1
        train_loss = loss_sum.item() / max(len(loader), 1)
        if not math.isfinite(train_loss):
            raise TrialFailed(f"supernet loss became {train_loss} in epoch {epoch}")
        accuracies = {}
        if data.val_labels.numel():
            for name, arch in (("largest", largest), ("smallest", smallest)):
                accuracies[name] = score(supernet, arch, data, device=device, batch_size=training.batch_size, seed=seed)
        record = {
            "epoch": epoch,
            "loss": train_loss,
            "distill_loss": distill_sum.item() / max(len(loader), 1),
            "val_accuracy_largest": accuracies.get("largest"),
            "val_accuracy_smallest": accuracies.get("smallest"),
            "lr": lr,
            "seconds": time.perf_counter() - started,
        }
        history.append(record)
        if on_epoch is not None and on_epoch(record):
            break
    supernet.eval()
    return history


@torch.no_grad()
def recalibrate_bn(supernet_or_model: nn.Module, loader_batches: Iterable[Any], num_batches: int) -> None:
    """Recompute every BatchNorm's running statistics as the plain average over
    ``num_batches`` batches (``momentum=None``), with the rest of the network in eval mode.
    Batches are image tensors or ``(images, labels)`` pairs on the model's device. Only the
    BN running statistics (mean, var, num_batches_tracked) change; the model ends in eval mode.
    """
    norms = [m for m in supernet_or_model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    supernet_or_model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    try:
        for batch in loader_batches:
            if seen >= num_batches:
                break
            supernet_or_model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            seen += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        supernet_or_model.eval()
    if norms and seen == 0:
        raise ValueError("recalibrate_bn got no batches: BatchNorm statistics are left reset")


def score(
    supernet: Supernet,
    arch: Architecture,
    data: Dataset,
    *,
    device: torch.device | str,
    calibration_batches: int = 4,
    batch_size: int = 128,
    seed: int = 0,
) -> float:
    """Validation accuracy of candidate ``arch`` with inherited weights: activate it,
    recalibrate BN on ``calibration_batches`` seeded training batches (shuffled, not
    augmented; the same batches for every candidate of a given seed), evaluate on
    ``data.val_*``. The supernet's BN statistics are left calibrated for ``arch``."""
    if not data.val_labels.numel():
        raise ValueError("score needs a validation split; the data set has none")
    device = torch.device(device)
    supernet.to(device)
    supernet.activate(arch)
    calibration = BatchLoader(
        data.train_images,
        data.train_labels,
        batch_size=batch_size,
        device=device,
        train=True,
        mean=data.mean,
        std=data.std,
        hflip=False,
        crop_padding=0,
        seed=seed,
    )
    recalibrate_bn(supernet, calibration, calibration_batches)
    validation = BatchLoader(
        data.val_images,
        data.val_labels,
        batch_size=max(256, batch_size),
        device=device,
        train=False,
        mean=data.mean,
        std=data.std,
    )
    return float(evaluate_loader(supernet, validation)[1])


def save_supernet(supernet: Supernet, path: str | Path, meta: dict) -> None:
    """Save the weights with the space's fingerprint and ``meta`` (JSON-able: e.g. training
    settings, seed, epochs), atomically, so that a later search of the same space reuses it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": _FORMAT,
        "space": json.dumps(supernet.space.fingerprint(), sort_keys=True),
        "meta": json.dumps(meta, sort_keys=True),
        "state_dict": {k: v.detach().cpu() for k, v in supernet.state_dict().items()},
    }
    atomic_torch_save(state, path)


def load_supernet(space: SearchSpace, path: str | Path) -> tuple[Supernet, dict]:
    """The supernet saved at ``path`` and its meta; raises :class:`SpaceError` if it was
    trained for another space (compare ``meta`` with the current settings before reuse)."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise SpaceError(f"{path} is not a saved supernet")
    if json.loads(state["space"]) != json.loads(json.dumps(space.fingerprint(), sort_keys=True)):
        raise SpaceError(f"supernet {path} was trained for another space than {space.name} (width {space.width})")
    supernet = Supernet(space)
    supernet.load_state_dict(state["state_dict"])
    return supernet, json.loads(state["meta"])
