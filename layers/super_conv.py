"""A convolution that holds every choice of one searchable layer with shared weights.

One-shot NAS by weight sharing (Once-for-All, Cai et al., arXiv 1908.09791; BigNAS, Yu et
al., arXiv 2003.11142): a supernet holds every candidate as a sub-network, so a candidate is
scored by activating it instead of training it. :class:`SuperConv2d` is that idea for one
layer of this tool's choices: a standard convolution, HetConv with P parts (Singh et al.,
CVPR 2019, arXiv 1903.04120) and FLGC with G learned groups (Wang et al., CVPR 2019, arXiv
1904.00346), all drawn from one KxK weight. With a choice active it computes exactly what
that choice's own layer (:func:`layers.create_conv2d`) computes with the same weights; FLGC's
assignment, its cache and its straight-through masked weight are the ones :class:`layers.FLGConv2d`
uses (:mod:`layers.assignment_batch`, :mod:`layers.straight_through`), solved per layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .assignment_batch import AssignmentCache, AssignmentRequest, HardAssignment
from .create_conv2d import create_conv2d
from .flgc import FLGConv2d
from .hetconv import HetConv2d, hetconv_block_mask
from .straight_through import masked_weight

__all__ = ["ConvChoice", "ConvSlot", "SuperConv2d"]


class ConvSlot(Protocol):
    """Where a searchable convolution sits: its name and shape (``models.LayerSlot`` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def in_channels(self) -> int: ...
    @property
    def out_channels(self) -> int: ...
    @property
    def kernel_size(self) -> int: ...
    @property
    def stride(self) -> int: ...


class ConvChoice(Protocol):
    """One choice for a searchable convolution: ``dense``, ``hetconv`` with ``part`` or ``flgc``
    with ``groups`` (``models.LayerSpec`` is one)."""

    @property
    def type(self) -> str: ...
    @property
    def part(self) -> int | None: ...
    @property
    def groups(self) -> int | None: ...
    @property
    def balanced(self) -> bool: ...
    @property
    def label(self) -> str: ...
    def conv_kwargs(self) -> dict[str, Any]: ...
    def check(self, slot: Any) -> None: ...


class SuperConv2d(nn.Module):
    """One searchable layer holding every choice of its space with shared weights.

    - ``weight`` (N, M, K, K): the KxK kernels. Dense (and HetConv P=1) uses all of them;
      HetConv P uses its block-diagonal g x g blocks (HetConv2d's grouped KxK kernels); FLGC G
      uses it masked by the learned groups.
    - ``pointwise`` (N, M): HetConv's 1x1 kernels, used off the block diagonal of the active P
      (only present if some choice is a HetConv with P > 1).
    - ``in_logits[str(G)]`` (M, G), ``out_logits[str(G)]`` (N, G): FLGC assignment logits per
      group count; balanced assignment and straight-through as in :class:`FLGConv2d`.

    ``forward`` computes exactly what the stand-alone layer of the active spec computes with
    these weights (same ops, same order), which :meth:`standalone` builds. The layer has no
    bias (every searchable conv of the models is followed by BatchNorm). Each choice is
    checked against ``slot`` (``choice.check(slot)``); ``error`` is the exception raised for a
    spec that is not one of ``choices`` (a search space passes its own).
    """

    def __init__(self, slot: ConvSlot, choices: Sequence[ConvChoice], *, error: type[Exception] = ValueError) -> None:
        super().__init__()
        self.slot, self.choices, self.error = slot, tuple(choices), error
        if not self.choices:
            raise ValueError(f"layer {slot.name} has no choices")
        for spec in self.choices:
            spec.check(slot)
        m, n, k = slot.in_channels, slot.out_channels, slot.kernel_size
        self.stride, self.padding = slot.stride, k // 2
        self.weight = nn.Parameter(torch.empty(n, m, k, k))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default
        parts = sorted({s.part for s in self.choices if s.type == "hetconv" and s.part and s.part > 1})
        self.pointwise = nn.Parameter(torch.empty(n, m)) if parts else None
        if self.pointwise is not None:
            nn.init.kaiming_uniform_(self.pointwise, a=math.sqrt(5))  # as HetConv2d's 1x1 conv
        for p in parts:  # zero on the block diagonal of part p
            self.register_buffer(f"_mask_p{p}", hetconv_block_mask(n, m, p), persistent=False)
        groups = sorted({s.groups for s in self.choices if s.type == "flgc" and s.groups})
        self.in_logits = nn.ParameterDict({str(g): nn.Parameter(torch.randn(m, g) * 0.01) for g in groups})
        self.out_logits = nn.ParameterDict({str(g): nn.Parameter(torch.randn(n, g) * 0.01) for g in groups})
        for g in groups:  # last balanced groups, as FLGConv2d keeps them (not saved)
            self.register_buffer(f"_in_groups_{g}", None, persistent=False)
            self.register_buffer(f"_out_groups_{g}", None, persistent=False)
        # FLGC's hard assignment per (G, balanced): balanced and free G share the logits
        self._assignments = {
            (s.groups, s.balanced): AssignmentCache() for s in self.choices if s.type == "flgc" and s.groups
        }
        self.active = self.choices[0]

    def activate(self, spec: ConvChoice) -> None:
        if spec not in self.choices:
            legal = ", ".join(s.label for s in self.choices)
            raise self.error(f"{spec.label} is not a choice of layer {self.slot.name} ({legal})")
        self.active = spec

    def capture_blocker(self) -> str | None:
        """Why a CUDA graph cannot replay a training step (``layers.capture``): the active
        choice is set on the host, typically per step."""
        return "a weight-sharing layer's active choice is set on the host"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.active
        if spec.type == "hetconv" and spec.part and spec.part > 1:
            y = F.conv2d(x, self._block_diagonal(spec.part), None, self.stride, self.padding, 1, spec.part)
            return y + F.conv2d(x, self._pointwise(spec.part)[:, :, None, None], None, self.stride)
        if spec.type == "flgc" and spec.groups:
            g = str(spec.groups)
            hard = self.assignment(spec)
            weight = masked_weight(self.weight, self.in_logits[g], self.out_logits[g], hard, self.training)
            return F.conv2d(x, weight, None, self.stride, self.padding)
        return F.conv2d(x, self.weight, None, self.stride, self.padding)  # dense, HetConv P=1

    def _block_diagonal(self, part: int) -> torch.Tensor:
        """(N, M/P, K, K): filter block g's kernels on channel block g, as ``HetConv2d.parts``."""
        n, m, k, _ = self.weight.shape
        blocks = self.weight.view(part, n // part, part, m // part, k, k).diagonal(dim1=0, dim2=2)
        return blocks.permute(4, 0, 1, 2, 3).reshape(n, m // part, k, k)

    def _pointwise(self, part: int) -> torch.Tensor:
        """(N, M): the 1x1 kernels with part ``part``'s block diagonal zeroed, as HetConv's."""
        assert self.pointwise is not None  # some choice is a HetConv with P > 1
        return self.pointwise * getattr(self, f"_mask_p{part}")

    def assignment(self, spec: ConvChoice) -> HardAssignment:
        """The hard assignment of FLGC choice ``spec`` from its group count's logits (cached
        while they hold), as :meth:`FLGConv2d.assignment` computes it."""
        groups, balanced = spec.groups, spec.balanced
        if spec.type != "flgc" or groups is None or (groups, balanced) not in self._assignments:
            raise self.error(f"{spec.label} is not an FLGC choice of layer {self.slot.name}")
        names = (f"_in_groups_{groups}", f"_out_groups_{groups}")
        previous = (getattr(self, names[0]), getattr(self, names[1]))
        request = AssignmentRequest(
            self.in_logits[str(groups)], self.out_logits[str(groups)], balanced, self.weight.dtype, previous
        )
        hard = self._assignments[groups, balanced].get(request)
        if balanced:
            setattr(self, names[0], hard.in_groups)
            setattr(self, names[1], hard.out_groups)
        return hard

    @torch.no_grad()
    def standalone(self, spec: ConvChoice) -> nn.Module:
        """The stand-alone layer of ``spec`` (``layers.create_conv2d``) holding copies of the
        shared weights: it computes what this layer computes with ``spec`` active."""
        if spec not in self.choices:
            raise self.error(f"{spec.label} is not a choice of layer {self.slot.name}")
        s = self.slot
        layer = create_conv2d(s.in_channels, s.out_channels, s.kernel_size, s.stride, **spec.conv_kwargs())
        layer = layer.to(self.weight.device, self.weight.dtype)
        if isinstance(layer, HetConv2d) and layer.part > 1:
            layer.load_parts(self._block_diagonal(layer.part), self._pointwise(layer.part)[:, :, None, None])
        elif isinstance(layer, HetConv2d):
            layer.weight.copy_(self.weight)
        elif isinstance(layer, FLGConv2d):
            g = layer.groups
            layer.weight.copy_(self.weight)
            layer.in_logits.copy_(self.in_logits[str(g)])
            layer.out_logits.copy_(self.out_logits[str(g)])
            if layer.balanced:  # same last groups, so that near-ties resolve the same way
                in_groups, out_groups = getattr(self, f"_in_groups_{g}"), getattr(self, f"_out_groups_{g}")
                layer.seed_assignment(_clone(in_groups), _clone(out_groups))
        else:
            assert isinstance(layer, nn.Conv2d)
            layer.weight.copy_(self.weight)
        return layer.train(self.training)

    def extra_repr(self) -> str:
        s = self.slot
        return (
            f"{s.name}: {s.in_channels}, {s.out_channels}, kernel_size={s.kernel_size}, "
            f"choices={len(self.choices)}, active={self.active.label}"
        )


def _clone(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.clone()
