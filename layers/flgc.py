"""FLGC: fully learnable group convolution.

Wang et al., "Fully Learnable Group Convolution for Acceleration of Deep Neural Networks",
CVPR 2019 (arXiv 1904.00346). A grouped convolution whose split of input channels and
filters into G groups is learned: logits ``A_in`` (C x G) and ``A_out`` (N x G) give hard
one-hot assignments ``B_in``, ``B_out`` in the forward pass; the connection mask
``M = B_out @ B_in^T`` (1 where a filter and a channel share a group) multiplies the weight.
Gradients reach the logits through a straight-through estimator (hard forward, softmax
backward).

The reference code assigns by plain argmax, which leaves groups unbalanced (so no standard
grouped convolution can run the result, and the real cost is ``sum_g |C_g| |N_g| K^2 D^2``).
Here the default is a balanced assignment: every group gets exactly C/G channels and N/G
filters, the stable assignment under the logits, so the nominal cost holds and the layer
deploys exactly to ``nn.Conv2d(groups=G)``. Free (argmax) assignment is kept as an option and
is counted by its true connections.

The assignment itself (balanced, on the logits' device, cached while the logits hold) lives in
:mod:`layers.group_assignment` and :mod:`layers.deferred_acceptance`, the hard tensors and the
batch that solves the assignments of all layers of a model at once in
:mod:`layers.assignment_batch`, the straight-through masked weight in
:mod:`layers.straight_through`; all are shared with the weight-sharing
:class:`layers.SuperConv2d`, and re-exported here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .assignment_batch import (
    AssignmentBatch,
    AssignmentCache,
    AssignmentRequest,
    HardAssignment,
    hard_assignment,
    hard_assignments,
    share_assignments,
)
from .group_assignment import (
    balanced_assignment,
    default_rounds,
    device_balanced_assignment,
    device_balanced_assignments,
    is_stable_assignment,
)
from .straight_through import masked_weight, one_hot, straight_through_one_hot

__all__ = [
    "AssignmentBatch",
    "AssignmentCache",
    "AssignmentRequest",
    "FLGConv2d",
    "HardAssignment",
    "balanced_assignment",
    "default_rounds",
    "device_balanced_assignment",
    "device_balanced_assignments",
    "hard_assignment",
    "hard_assignments",
    "is_stable_assignment",
    "masked_weight",
    "one_hot",
    "param_groups_without_logit_decay",
    "share_assignments",
    "straight_through_one_hot",
]


class FLGConv2d(nn.Module):
    """Fully learnable group convolution (training form).

    Args:
        in_channels: C.
        out_channels: N.
        groups: G; with ``balanced=True`` it must divide C and N.
        kernel_size, stride, padding, bias: as in :class:`torch.nn.Conv2d`
            (padding defaults to "same" for odd kernels).
        balanced: every group gets exactly C/G channels and N/G filters (default). With
            ``False`` each channel and filter takes its argmax group, as in the paper's code.
        reassign_every: in training, recompute the assignment every this many steps and
            reuse it (and its hard mask) in between; 1 (default) follows the logits at every
            step, as the paper does. The gradients reach the logits at every step either way.

    The assignment is solved by the layer's :attr:`assignment_batch`: its own until
    :func:`layers.share_assignments` (which ``models.build_model`` calls) makes every FLGC
    layer of a model share one, so that a step solves all of them at once.

    Example:
        >>> layer = FLGConv2d(32, 64, groups=4, kernel_size=1)
        >>> layer(torch.randn(2, 32, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
        >>> int(layer.connection_mask().sum())  # 4 groups of 8 channels x 16 filters
        512
    """

    _in_groups: torch.Tensor | None  # buffers, registered in __init__
    _out_groups: torch.Tensor | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        groups: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = False,
        balanced: bool = True,
        reassign_every: int = 1,
    ) -> None:
        super().__init__()
        if groups < 1 or (balanced and (in_channels % groups or out_channels % groups)):
            raise ValueError(
                f"FLGC groups {groups} must divide in_channels {in_channels} and out_channels {out_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.groups = groups
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.balanced = balanced
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        # Fan-in of the grouped conv this layer becomes, so activations keep their scale.
        nn.init.kaiming_normal_(self.weight, mode="fan_in", nonlinearity="relu")
        self.weight.data.mul_(math.sqrt(groups))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.in_logits = nn.Parameter(torch.randn(in_channels, groups) * 0.01)
        self.out_logits = nn.Parameter(torch.randn(out_channels, groups) * 0.01)
        if reassign_every < 1:
            raise ValueError(f"FLGC reassign_every must be >= 1, got {reassign_every}")
        self.reassign_every = reassign_every
        # Last balanced groups (buffers, so they follow the layer to another device; not
        # saved: they follow from the logits); the device algorithm falls back to them when
        # its rounds do not settle.
        self.register_buffer("_in_groups", None, persistent=False)
        self.register_buffer("_out_groups", None, persistent=False)
        self.assignment_cache = AssignmentCache()
        self.assignment_batch = AssignmentBatch()
        self.assignment_batch.add(self)
        self._training_steps = 0

    def assignment(self) -> HardAssignment:
        """The hard assignment (groups, mask, one-hots in the weight's dtype), recomputed only
        when the logits have changed, on the logits' device without waiting on the host."""
        return self.assignment_batch.assignment(self)

    def assignment_request(self) -> AssignmentRequest:
        """What the assignment is computed from (for :class:`layers.AssignmentBatch`)."""
        previous = (self._in_groups, self._out_groups) if self.balanced else (None, None)
        return AssignmentRequest(self.in_logits, self.out_logits, self.balanced, self.weight.dtype, previous)

    def seed_assignment(self, in_groups: torch.Tensor | None, out_groups: torch.Tensor | None) -> None:
        """Set the last balanced groups, which the host loop keeps while they are still
        stable (with tied logits several are: a weight-sharing layer hands over its own, so
        that its stand-alone layer resolves ties the same way)."""
        self._in_groups, self._out_groups = in_groups, out_groups

    def capture_blocker(self) -> str | None:
        """Why a CUDA graph cannot replay this layer's training step (``layers.capture``)."""
        if self.reassign_every > 1:
            return f"FLGC reassign_every={self.reassign_every} counts steps on the host"
        return None

    def input_groups(self) -> torch.Tensor:
        """Group index of every input channel, (C,)."""
        return self.assignment().in_groups

    def output_groups(self) -> torch.Tensor:
        """Group index of every filter, (N,)."""
        return self.assignment().out_groups

    def connection_mask(self) -> torch.Tensor:
        """(N, C) 0/1 mask: 1 where filter and channel share a group. No gradient."""
        return self.assignment().mask.clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self.assignment_cache.last
        if (
            self.training
            and self._training_steps % self.reassign_every
            and last is not None
            and last.mask.dtype == self.weight.dtype
            and last.mask.device == self.weight.device
        ):
            # between reassignments: the last one, even if the logits moved (so its softmax is
            # not theirs any more)
            hard = last._replace(soft_in=None, soft_out=None)
        else:
            hard = self.assignment()
        if self.training:
            self._training_steps += 1
        weight = masked_weight(self.weight, self.in_logits, self.out_logits, hard, self.training)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding)

    @torch.no_grad()
    def deploy(self, form: str = "grouped") -> nn.Module:
        """The inference form with the learned assignment frozen.

        ``grouped``: with balanced groups, ``Sequential(ChannelGather(channels in group
        order), Conv2d(groups=G), ChannelGather(back to filter order))``, a standard grouped
        convolution whose two gathers :func:`models.deploy` folds into neighbouring layers
        where that is exact; with free (unbalanced) groups, :class:`GroupSplitConv`.
        ``dense``: one standard convolution with the connections outside the groups zeroed,
        in the original channel order: no gather at all, and the neighbours' gathers fold
        into it, but dense FLOPs. Where gathers cannot be folded away, it can be the faster.
        """
        from .deployed import ChannelGather, GroupSplitConv

        in_groups, out_groups = self.input_groups(), self.output_groups()
        k, device, dtype = self.kernel_size, self.weight.device, self.weight.dtype
        if form == "dense":
            conv = nn.Conv2d(
                self.in_channels, self.out_channels, k, self.stride, self.padding, bias=self.bias is not None
            )
            conv = conv.to(device, dtype)
            conv.weight.copy_(self.weight * self.connection_mask()[:, :, None, None].to(dtype))
            if self.bias is not None and conv.bias is not None:
                conv.bias.copy_(self.bias)
            return conv
        if form != "grouped":
            raise ValueError(f"unknown FLGC deploy form {form!r}; use grouped or dense")
        if self.balanced:
            in_order = torch.argsort(in_groups, stable=True)  # channels of group 0, then group 1 ...
            out_order = torch.argsort(out_groups, stable=True)
            per_group_in = self.in_channels // self.groups
            conv = nn.Conv2d(
                self.in_channels,
                self.out_channels,
                k,
                self.stride,
                self.padding,
                groups=self.groups,
                bias=self.bias is not None,
            ).to(device, dtype)
            # Row j of the grouped conv is filter out_order[j], of group j // (N/G); it sees
            # that group's channels in_order[g*C/G : (g+1)*C/G].
            group_of_row = out_groups[out_order]
            cols = in_order.view(self.groups, per_group_in)[group_of_row]  # (N, C/G)
            conv.weight.copy_(self.weight[out_order[:, None], cols])
            if self.bias is not None and conv.bias is not None:
                conv.bias.copy_(self.bias[out_order])
            return nn.Sequential(ChannelGather(in_order), conv, ChannelGather(torch.argsort(out_order)))
        convs, in_indices, out_indices = [], [], []
        for g in range(self.groups):
            ins, outs = (in_groups == g).nonzero().squeeze(1), (out_groups == g).nonzero().squeeze(1)
            if outs.numel() == 0:
                continue
            if ins.numel() == 0:  # filters with no input channel output a constant (their bias)
                ins = torch.zeros(1, dtype=torch.long, device=device)
                weight = torch.zeros(outs.numel(), 1, k, k, device=device, dtype=dtype)
            else:
                weight = self.weight[outs[:, None], ins]
            conv = nn.Conv2d(ins.numel(), outs.numel(), k, self.stride, self.padding, bias=self.bias is not None)
            conv = conv.to(device, dtype)
            conv.weight.copy_(weight)
            if self.bias is not None and conv.bias is not None:
                conv.bias.copy_(self.bias[outs])
            convs.append(conv)
            in_indices.append(ins)
            out_indices.append(outs)
        return GroupSplitConv(convs, in_indices, out_indices, self.out_channels)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, groups={self.groups}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, balanced={self.balanced}"
        )


def param_groups_without_logit_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups: FLGC assignment logits (any parameter whose name says
    ``logits``, so weight-sharing variants are covered too), biases and BatchNorm in a group
    with ``weight_decay=0``; the rest decayed.

    Decaying the logits would pull every assignment towards a tie and make them flip at
    random, which is why the FLGC paper keeps them out of weight decay.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_logit = any(part.endswith("logits") for part in name.split("."))
        (no_decay if is_logit or param.ndim <= 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
