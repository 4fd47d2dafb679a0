"""FLOPs (MACs) and parameter counts, measured with ptflops.

Conventions (docs/flops.md):

- ``mflops``: millions of multiply-accumulates of conv and linear layers, the papers'
  convention, with HetConv and FLGC counted at their effective connections (custom ptflops
  hooks below). BatchNorm, activations and pooling are not counted.
- ``mflops_all_ops``: the same plus everything ptflops counts per module (BatchNorm,
  activations, pooling), which some papers quote.
- ``params``: effective parameters, the papers' count: weights that can be non-zero in the
  network that runs. Masked HetConv weights, FLGC weights outside the learned groups and
  FLGC assignment logits are not counted. (HetConv's deployed split form still stores its
  1x1 block diagonal as zeros: a dense 1x1 convolution is faster than a masked one.)

ptflops pitfalls handled here: the backend is always given; ``count_functional=False``
(otherwise ReLU and max-pool are counted twice and FLGC's mask product is added); hooks match
exact types, so our layers get their own hooks; ptflops leaves the model in eval mode, so the
training mode is restored; nothing is printed.
"""

from __future__ import annotations

import functools
import io
from dataclasses import asdict, dataclass

import torch
from ptflops import get_model_complexity_info
from ptflops.pytorch_ops import MODULES_MAPPING
from torch import nn

from layers import FLGConv2d, HetConv2d
from models import Architecture, LayerSlot, LayerSpec, build_model
from spaces import SearchSpace

__all__ = [
    "Cost",
    "architecture_cost",
    "cheapest_and_dearest",
    "count_cost",
    "count_params",
    "learns_its_cost",
    "slot_macs",
]

_NOT_IN_PAPER_COUNT = [
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
]


@dataclass(frozen=True)
class Cost:
    mflops: float  # conv + linear MACs, millions (paper convention)
    mflops_all_ops: float  # plus BatchNorm, activations, pooling
    params: int  # parameters of the deployed model

    def to_json(self) -> dict:
        return asdict(self)


def _bias_macs(module: nn.Module, output: torch.Tensor) -> int:
    bias = getattr(module, "bias", None)
    return output[0].numel() if bias is not None else 0


def _hetconv_hook(module: HetConv2d, inputs: tuple, output: torch.Tensor) -> None:
    m, n, k, p = module.in_channels, module.out_channels, module.kernel_size, module.part
    positions = output.shape[2] * output.shape[3]
    per_sample = positions * n * (k * k * m // p + (m - m // p)) + _bias_macs(module, output)
    module.__flops__ += int(per_sample * output.shape[0])


def _flgc_hook(module: FLGConv2d, inputs: tuple, output: torch.Tensor) -> None:
    connections = int(module.connection_mask().sum().item())
    positions = output.shape[2] * output.shape[3]
    per_sample = connections * module.kernel_size**2 * positions + _bias_macs(module, output)
    module.__flops__ += int(per_sample * output.shape[0])


_HOOKS = {HetConv2d: _hetconv_hook, FLGConv2d: _flgc_hook}


def _ptflops_macs(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[int, int]:
    """(paper MACs, all-ops MACs) of ``model`` in one ptflops pass: the modules the paper's
    count leaves out are counted by ptflops' own hooks, wrapped to tally what they add (one
    forward instead of two, a tenth of what a trial costs the driver)."""
    left_out = [0]

    def tallied(hook):
        def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            before = module.__flops__
            hook(module, inputs, output)
            left_out[0] += module.__flops__ - before

        return count

    hooks = {kind: tallied(MODULES_MAPPING[kind]) for kind in _NOT_IN_PAPER_COUNT}
    log = io.StringIO()
    macs, _ = get_model_complexity_info(
        model,
        input_size,
        print_per_layer_stat=False,
        as_strings=False,
        ost=log,
        custom_modules_hooks={**hooks, **_HOOKS},
        backend="pytorch",
        backend_specific_config={"count_functional": False},
    )
    if macs is None:  # ptflops swallows the exception and returns None
        raise RuntimeError(f"ptflops could not count the model: {log.getvalue().strip()}")
    return int(macs) - left_out[0], int(macs)


def count_params(module: nn.Module) -> int:
    """Effective parameters (see module docstring)."""
    if isinstance(module, HetConv2d):
        total = module.weight.numel() if module.mask is None else int(module.mask.sum().item())
        return total + (module.bias.numel() if module.bias is not None else 0)
    if isinstance(module, FLGConv2d):
        total = int(module.connection_mask().sum().item()) * module.kernel_size**2
        return total + (module.bias.numel() if module.bias is not None else 0)
    own = sum(p.numel() for p in module.parameters(recurse=False))
    return own + sum(count_params(child) for child in module.children())


@torch.no_grad()
def count_cost(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> Cost:
    """Count ``model`` for one input of ``input_size`` (C, H, W); the model's mode is kept."""
    was_training = model.training
    try:
        paper, all_ops = _ptflops_macs(model, input_size)
    finally:
        model.train(was_training)
    return Cost(mflops=paper / 1e6, mflops_all_ops=all_ops / 1e6, params=count_params(model))


def learns_its_cost(arch: Architecture) -> bool:
    """Whether training can change what ``arch`` costs: only free (unbalanced) FLGC groups learn
    their connections; every other layer costs what its shape says, whatever its weights."""
    return any(spec.type == "flgc" and not spec.balanced for spec in arch.layers)


@functools.lru_cache(maxsize=512)
def architecture_cost(arch: Architecture) -> Cost:
    """Cost of the model built from ``arch`` (FLGC with free groups: at its initial assignment).
    Cached: the same candidate is counted once per process."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return count_cost(build_model(arch))


def slot_macs(slot: LayerSlot, spec: LayerSpec) -> int:
    """Closed-form MACs of one searchable layer (no bias), per input image.

    HetConv: ``D^2 N (K^2 M/P + M - M/P)``; balanced FLGC: ``D^2 N M K^2 / G``; dense:
    ``D^2 N M K^2``. Free FLGC depends on the learned assignment and has no closed form; its
    nominal value (as if balanced) is returned.
    """
    m, n, k = slot.in_channels, slot.out_channels, slot.kernel_size
    positions = slot.output_size**2
    if spec.type == "hetconv":
        p = spec.part or 1
        return positions * n * (k * k * m // p + (m - m // p))
    if spec.type == "flgc":
        return positions * n * m * k * k // (spec.groups or 1)
    return positions * n * m * k * k


def cheapest_and_dearest(space: SearchSpace) -> tuple[Architecture, Architecture]:
    """The cheapest and the most expensive candidate of ``space`` (per-layer costs add up, so
    picking each layer's extreme by closed-form MACs gives the global extremes)."""
    cheapest, dearest = [], []
    for slot, options in zip(space.slots, space.choices):
        ranked = sorted(options, key=lambda spec: slot_macs(slot, spec))
        cheapest.append(ranked[0])
        dearest.append(ranked[-1])
    return (
        Architecture(space.model, space.width, space.num_classes, tuple(cheapest)),
        Architecture(space.model, space.width, space.num_classes, tuple(dearest)),
    )
