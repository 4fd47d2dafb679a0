"""A weight-sharing supernet over a space's per-layer HetConv parts / FLGC groups.

One-shot NAS in the style of Once-for-All (Cai et al., arXiv 1908.09791) and BigNAS (Yu et
al., arXiv 2003.11142): every candidate of a :class:`spaces.SearchSpace` is a sub-network of
one supernet whose searchable convolutions (:class:`SuperConv2d`) hold every choice of their
layer with shared weights. The supernet is trained once; a candidate is then scored in
seconds by activating it, recalibrating BatchNorm and evaluating, instead of being trained.

- **Sandwich rule** (BigNAS): every step trains the largest candidate, the smallest and a few
  random ones, with gradients accumulated into one optimizer step. The extremes bound the
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
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layers import create_conv2d, hetconv_block_mask
from layers.flgc import device_balanced_assignment, one_hot, straight_through_one_hot
from models import Architecture, LayerSlot, LayerSpec, build_model, mark_searchable, searchable_layers
from search.evaluation.cost import slot_macs
from search.evaluation.data import BatchLoader, Dataset
from search.evaluation.train import NonFiniteWatch, TrialFailed, evaluate_loader, lr_at, prepare_training
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


class SuperConv2d(nn.Module):
    """One searchable layer holding every choice of its space with shared weights.

    - ``weight`` (N, M, K, K): the KxK kernels. Dense (and HetConv P=1) uses all of them;
      HetConv P uses its block-diagonal g x g blocks (what ``HetConv2d.gwc`` holds); FLGC G
      uses it masked by the learned groups.
    - ``pointwise`` (N, M): HetConv's 1x1 kernels, used off the block diagonal of the active P
      (only present if some choice is a HetConv with P > 1).
    - ``in_logits[str(G)]`` (M, G), ``out_logits[str(G)]`` (N, G): FLGC assignment logits per
      group count; balanced assignment and straight-through as in :class:`FLGConv2d`.

    ``forward`` computes exactly what the stand-alone layer of the active spec computes with
    these weights (same ops, same order), which :meth:`standalone` builds. The layer has no
    bias (every searchable conv of the models is followed by BatchNorm).
    """

    def __init__(self, slot: LayerSlot, choices: Sequence[LayerSpec]) -> None:
        super().__init__()
        self.slot, self.choices = slot, tuple(choices)
        if not self.choices:
            raise ValueError(f"layer {slot.name} has no choices")
        for spec in self.choices:
            spec.check(slot)
        m, n, k = slot.in_channels, slot.out_channels, slot.kernel_size
        self.stride, self.padding = slot.stride, k // 2
        self.weight = nn.Parameter(torch.empty(n, m, k, k))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default
        parts = sorted({s.part for s in self.choices if s.type == "hetconv" and s.part > 1})
        self.pointwise = nn.Parameter(torch.empty(n, m)) if parts else None
        if parts:
            nn.init.kaiming_uniform_(self.pointwise, a=math.sqrt(5))  # as HetConv2d's 1x1 conv
        for p in parts:  # zero on the block diagonal of part p
            self.register_buffer(f"_mask_p{p}", hetconv_block_mask(n, m, p), persistent=False)
        groups = sorted({s.groups for s in self.choices if s.type == "flgc"})
        self.in_logits = nn.ParameterDict({str(g): nn.Parameter(torch.randn(m, g) * 0.01) for g in groups})
        self.out_logits = nn.ParameterDict({str(g): nn.Parameter(torch.randn(n, g) * 0.01) for g in groups})
        for g in groups:  # last balanced assignments, as FLGConv2d caches them (not saved)
            self.register_buffer(f"_in_groups_{g}", None, persistent=False)
            self.register_buffer(f"_out_groups_{g}", None, persistent=False)
        self.active = self.choices[0]

    def activate(self, spec: LayerSpec) -> None:
        if spec not in self.choices:
            legal = ", ".join(s.label for s in self.choices)
            raise SpaceError(f"{spec.label} is not a choice of layer {self.slot.name} ({legal})")
        self.active = spec

    def forward(self, x: Tensor) -> Tensor:
        spec = self.active
        if spec.type == "hetconv" and spec.part > 1:
            y = F.conv2d(x, self._block_diagonal(spec.part), None, self.stride, self.padding, 1, spec.part)
            pointwise = (self.pointwise * getattr(self, f"_mask_p{spec.part}"))[:, :, None, None]
            return y + F.conv2d(x, pointwise, None, self.stride)
        if spec.type == "flgc":
            out_groups, in_groups = self._groups(spec)
            g = str(spec.groups)
            if self.training:
                b_out = straight_through_one_hot(self.out_logits[g], out_groups)
                b_in = straight_through_one_hot(self.in_logits[g], in_groups)
            else:
                b_out = one_hot(out_groups, spec.groups, self.weight.dtype)
                b_in = one_hot(in_groups, spec.groups, self.weight.dtype)
            mask = b_out @ b_in.t()
            weight = self.weight * mask[:, :, None, None].to(self.weight.dtype)
            return F.conv2d(x, weight, None, self.stride, self.padding)
        return F.conv2d(x, self.weight, None, self.stride, self.padding)  # dense, HetConv P=1

    def _block_diagonal(self, part: int) -> Tensor:
        """(N, M/P, K, K): filter block g's kernels on channel block g, as ``HetConv2d.gwc``."""
        n, m, k, _ = self.weight.shape
        blocks = self.weight.view(part, n // part, part, m // part, k, k).diagonal(dim1=0, dim2=2)
        return blocks.permute(4, 0, 1, 2, 3).reshape(n, m // part, k, k)

    def _groups(self, spec: LayerSpec) -> tuple[Tensor, Tensor]:
        """(output groups (N,), input groups (M,)) of FLGC ``spec`` from its logits."""
        g = str(spec.groups)
        if not spec.balanced:
            return self.out_logits[g].detach().argmax(1), self.in_logits[g].detach().argmax(1)
        assigned = []
        for side, logits in (("out", self.out_logits[g]), ("in", self.in_logits[g])):
            name = f"_{side}_groups_{g}"
            assignment = device_balanced_assignment(logits, getattr(self, name))
            setattr(self, name, assignment)
            assigned.append(assignment)
        return assigned[0], assigned[1]

    @torch.no_grad()
    def standalone(self, spec: LayerSpec) -> nn.Module:
        """The stand-alone layer of ``spec`` (``layers.create_conv2d``) holding copies of the
        shared weights: it computes what this layer computes with ``spec`` active."""
        if spec not in self.choices:
            raise SpaceError(f"{spec.label} is not a choice of layer {self.slot.name}")
        s = self.slot
        layer = create_conv2d(s.in_channels, s.out_channels, s.kernel_size, s.stride, **spec.conv_kwargs())
        layer = layer.to(self.weight.device, self.weight.dtype)
        if spec.type == "hetconv" and spec.part > 1:
            layer.gwc.weight.copy_(self._block_diagonal(spec.part))
            layer.pwc.weight.copy_((self.pointwise * getattr(self, f"_mask_p{spec.part}"))[:, :, None, None])
        elif spec.type == "hetconv":
            layer.gwc.weight.copy_(self.weight)
        elif spec.type == "flgc":
            g = str(spec.groups)
            layer.weight.copy_(self.weight)
            layer.in_logits.copy_(self.in_logits[g])
            layer.out_logits.copy_(self.out_logits[g])
            if spec.balanced:  # same cached assignment, so that near-ties resolve the same way
                for side in ("in", "out"):
                    cached = getattr(self, f"_{side}_groups_{g}")
                    setattr(layer, f"_{side}_groups", None if cached is None else cached.clone())
        else:
            layer.weight.copy_(self.weight)
        return layer.train(self.training)

    def extra_repr(self) -> str:
        s = self.slot
        return (
            f"{s.name}: {s.in_channels}, {s.out_channels}, kernel_size={s.kernel_size}, "
            f"choices={len(self.choices)}, active={self.active.label}"
        )


class Supernet(nn.Module):
    """The dense model of ``space`` with every searchable conv replaced by a
    :class:`SuperConv2d`; everything else (stem, BatchNorm, depthwise, head) is shared as is.

    Example:
        >>> from spaces import get_space
        >>> net = Supernet(get_space("vgg_hetconv", width=0.25))
        >>> net.activate(net.smallest())
        >>> net(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        self.model = build_model(space.dense())
        found = searchable_layers(self.model)
        if len(found) != len(space.slots):
            raise ValueError(f"{space.model} has {len(found)} searchable convs, the space {len(space.slots)} slots")
        layers = []
        for (parent, attr), slot, choices in zip(found, space.slots, space.choices):
            conv = getattr(parent, attr)
            shape = (conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0])
            if shape != (slot.in_channels, slot.out_channels, slot.kernel_size, slot.stride):
                raise ValueError(f"slot {slot.name} does not match searchable conv {shape} (slot order?)")
            layer = SuperConv2d(slot, choices)
            with torch.no_grad():
                layer.weight.copy_(conv.weight)
            setattr(parent, attr, mark_searchable(layer))
            layers.append(layer)
        self.layers: tuple[SuperConv2d, ...] = tuple(layers)  # plain attribute; registered via self.model
        self.activate(self.largest())

    def activate(self, arch: Architecture) -> None:
        if not self.space.contains(arch):
            raise SpaceError(f"architecture {arch.summary()!r} is not a candidate of space {self.space.name}")
        for layer, spec in zip(self.layers, arch.layers):
            layer.activate(spec)
        self.active = arch

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

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

    def sample(self, generator: torch.Generator) -> Architecture:
        """A uniform random choice per layer (``generator`` on the CPU)."""
        specs = [options[int(torch.randint(len(options), (), generator=generator))] for options in self.space.choices]
        return Architecture(self.space.model, self.space.width, self.space.num_classes, tuple(specs))

    @torch.no_grad()
    def extract(self, arch: Architecture) -> nn.Module:
        """``build_model(arch)`` with the inherited weights: the searchable layers get
        :meth:`SuperConv2d.standalone` weights, every other module the supernet's parameters
        and buffers (BatchNorm statistics included). Its output equals the supernet's with
        ``arch`` active. The global RNG state is left untouched."""
        if not self.space.contains(arch):
            raise SpaceError(f"architecture {arch.summary()!r} is not a candidate of space {self.space.name}")
        reference = self.layers[0].weight
        with torch.random.fork_rng(devices=[]):
            model = build_model(arch).to(reference.device, reference.dtype)
        shared = _without_searchable(self.model)
        target = _without_searchable(model)
        if shared.keys() != target.keys():
            raise RuntimeError(f"supernet and {arch.model} differ outside the searchable layers")
        missing, unexpected = model.load_state_dict(shared, strict=False)
        assert not unexpected and len(missing) + len(shared) == len(model.state_dict())
        for (parent, attr), layer, spec in zip(searchable_layers(model), self.layers, arch.layers):
            setattr(parent, attr, mark_searchable(layer.standalone(spec)))
        return model.train(self.training)


def _without_searchable(model: nn.Module) -> dict[str, Tensor]:
    """State dict entries that do not belong to a searchable layer."""
    searchable = {id(getattr(parent, attr)) for parent, attr in searchable_layers(model)}
    prefixes = tuple(name + "." for name, module in model.named_modules() if id(module) in searchable)
    return {key: value for key, value in model.state_dict().items() if not key.startswith(prefixes)}


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
    divergence to the largest's detached predictions; gradients accumulated, then one SGD
    Nesterov step with train.py's schedule (``lr_at``) and decay groups. After every epoch the
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
                scaler.scale(loss).backward()
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
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


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
