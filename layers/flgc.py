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

The layer computes the assignment on the logits' device (:func:`device_balanced_assignment`),
so that a GPU training step never waits on the host; :func:`balanced_assignment` is the same
assignment by a host loop, the reference it is tested against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FLGConv2d",
    "balanced_assignment",
    "default_rounds",
    "device_balanced_assignment",
    "device_balanced_assignments",
    "is_stable_assignment",
    "one_hot",
    "param_groups_without_logit_decay",
    "straight_through_one_hot",
]


def is_stable_assignment(logits: torch.Tensor, assignment: torch.Tensor) -> bool:
    """True if ``assignment`` is balanced and no row prefers a group that holds a row with a
    lower logit for it. With distinct logits the stable assignment is unique, so a stable
    previous assignment is the answer again (the cheap path of :class:`FLGConv2d`)."""
    rows, groups = logits.shape
    if assignment.shape != (rows,) or assignment.min() < 0 or assignment.max() >= groups:
        return False
    if not bool((torch.bincount(assignment, minlength=groups) == rows // groups).all()):
        return False
    scores = torch.nan_to_num(logits.detach().double(), nan=-1e300, posinf=1e300, neginf=-1e300)
    own = scores.gather(1, assignment[:, None])
    weakest = torch.full((groups,), math.inf, dtype=scores.dtype, device=scores.device)
    weakest = weakest.scatter_reduce(0, assignment, own.squeeze(1), reduce="amin")
    envy = (scores > own) & (scores > weakest[None, :])
    return not bool(envy.any())


@torch.no_grad()
def balanced_assignment(logits: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
    """Assign each row of ``logits`` (R x G) to a group so that every group gets R/G rows.

    The result is the stable assignment (as in deferred acceptance, where rows and groups
    both rank by the logit of the pair): no row prefers another group that holds a row with
    a lower logit for it. Because both sides rank by the same numbers, that assignment is
    unique and greedy selection finds it: take (row, group) pairs by decreasing logit and
    keep each pair whose row is unplaced and whose group has room, O(RG log RG) in a host
    loop. Returns group indices (R,), int64, on the logits' device. ``previous``, if still
    stable under ``logits``, is returned as is. It reads the logits on the host (a GPU would
    wait for it): layers use :func:`device_balanced_assignment`, which returns the same.
    """
    rows, groups = logits.shape
    if rows % groups:
        raise ValueError(f"{rows} rows cannot be split into {groups} equal groups")
    if previous is not None and is_stable_assignment(logits, previous):
        return previous
    scores = torch.nan_to_num(logits.detach().double(), nan=-1e300, posinf=1e300, neginf=-1e300).cpu().numpy()
    order = np.argsort(-scores, axis=None, kind="stable")
    room = [rows // groups] * groups
    assignment = [-1] * rows
    unplaced = rows
    for row, group in zip(*(a.tolist() for a in np.divmod(order, groups))):
        if assignment[row] < 0 and room[group] > 0:
            assignment[row] = group
            room[group] -= 1
            unplaced -= 1
            if unplaced == 0:
                break
    return torch.tensor(assignment, dtype=torch.long, device=logits.device)


def default_rounds(groups: int) -> int:
    """Proposal rounds :func:`device_balanced_assignment` runs by default.

    Measured on random, near-tied (the init's 0.01 scale), all-tied and one-sided logits of
    4 to 512 rows: deferred acceptance settled within 2 rounds at G = 2 (always: the rows
    rejected by one group fit the other), 6 at G = 4, 12 at G = 8 and 21 at G = 16. The
    bound leaves room for harder logits; when it is not enough the previous assignment
    is kept, so the cost is bounded and the result still balanced."""
    return 2 * groups + 4


@torch.no_grad()
def device_balanced_assignment(
    logits: torch.Tensor,
    previous: torch.Tensor | None = None,
    rounds: int | None = None,
    host_loop_on_cpu: bool | None = None,
) -> torch.Tensor:
    """The stable balanced assignment of :func:`balanced_assignment`, computed where the
    logits live without ever waiting on the host (no ``.item()``, no copy, no loop that
    depends on values), so a GPU training step never stalls on it.

    Vectorised deferred acceptance: in each of ``rounds`` rounds every row proposes to its
    best group that has not yet rejected it, and every group keeps its R/G best proposers.
    Ties are broken as the greedy breaks them (by the rank of each (row, group) pair in a
    stable sort of the logits), so the preferences are strict and consistent and, once no
    group rejects anyone, the result is the unique stable assignment, the same one
    :func:`balanced_assignment` returns. If the rounds do not settle, ``previous`` (a
    balanced assignment, typically the last step's) is returned; without one, the rows are
    packed into groups in the order of their last proposals, which is balanced too.
    Returns group indices (R,), int64, on the logits' device.
    """
    return device_balanced_assignments([logits], [previous], rounds, host_loop_on_cpu)[0]


@torch.no_grad()
def device_balanced_assignments(
    logits: Sequence[torch.Tensor],
    previous: Sequence[torch.Tensor | None],
    rounds: int | None = None,
    host_loop_on_cpu: bool | None = None,
) -> list[torch.Tensor]:
    """:func:`device_balanced_assignment` of several logit matrices (with the same device and
    group count, e.g. the input and output side of one layer) solved together: side i gets
    columns ``i*G .. i*G+G-1`` of one block-diagonal problem, so the rounds launch half the
    kernels of two separate calls (a GPU at CIFAR scale is bound by launches, not work).

    On the CPU (unless ``host_loop_on_cpu=False``) :func:`balanced_assignment` answers
    instead: the same assignment, faster there, and exact even where the rounds would not
    settle."""
    groups = logits[0].shape[1]
    sizes = [side.shape[0] for side in logits]
    for rows, side in zip(sizes, logits):
        if side.shape[1] != groups or rows % groups:
            raise ValueError(f"{rows} rows cannot be split into {side.shape[1]} equal groups")
    device = logits[0].device
    if groups == 1:
        return [torch.zeros(rows, dtype=torch.long, device=device) for rows in sizes]
    # On the CPU reading a value costs nothing (no queue of device work to drain), and the
    # host loop, which returns the same assignment, is the faster there.
    if device.type == "cpu" if host_loop_on_cpu is None else host_loop_on_cpu:
        return [balanced_assignment(side, prev) for side, prev in zip(logits, previous)]
    sides, rows = len(logits), sum(sizes)
    cols = sides * groups
    scores = torch.full((rows, cols), -math.inf, dtype=torch.float64, device=device)
    for i, side in enumerate(logits):
        start = sum(sizes[:i])
        scores[start : start + sizes[i], i * groups : (i + 1) * groups] = torch.nan_to_num(
            side.detach().double(), nan=-1e300, posinf=1e300, neginf=-1e300
        )
    order = torch.argsort(scores.flatten(), descending=True, stable=True)
    # keys: distinct ranks, larger is better (row-major ties, as the greedy); -1 is "not a
    # choice": rejected, or another side's column.
    alive = torch.empty_like(order).index_put_((order,), torch.arange(rows * cols - 1, -1, -1, device=device))
    alive = alive.view(rows, cols).masked_fill_(scores == -math.inf, -1)
    # (built on the device: a tensor from a Python list would be a copy that waits on the GPU)
    caps = torch.cat([torch.full((groups,), size // groups, device=device) for size in sizes])
    top = max(sizes) // groups
    for _ in range(default_rounds(groups) if rounds is None else rounds):
        best = alive.max(dim=1, keepdim=True).values
        proposals = torch.where(alive == best, alive, -1)  # each row's one proposal, else -1
        kept_from = proposals.topk(top, dim=0).values.gather(0, caps[None] - 1)  # each group's cap-th best
        alive = alive.masked_fill((proposals >= 0) & (proposals < kept_from), -1)
    best, choice = alive.max(dim=1)
    results = []
    for i, side_prev in enumerate(previous):
        start = sum(sizes[:i])
        side_best, side_choice = best[start : start + sizes[i]], choice[start : start + sizes[i]] - i * groups
        cap = sizes[i] // groups
        # Pack rows by (proposal, rank): when settled every group got exactly cap proposals,
        # and the packing is the proposals themselves.
        packed = torch.empty_like(side_choice).index_put_(
            (torch.argsort(side_choice * rows * cols - side_best, stable=True),),
            torch.arange(sizes[i], device=device) // cap,
        )
        if side_prev is not None:
            packed = torch.where((packed == side_choice).all(), packed, side_prev.to(device))
        results.append(packed)
    return results


def one_hot(index: torch.Tensor, classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``F.one_hot`` without its range check, which waits on the GPU."""
    return (index[:, None] == torch.arange(classes, device=index.device)).to(dtype)


def straight_through_one_hot(logits: torch.Tensor, hard_index: torch.Tensor) -> torch.Tensor:
    """One-hot of ``hard_index`` in the forward pass, gradient of softmax(logits) backward."""
    soft = logits.softmax(dim=1)
    hard = one_hot(hard_index, logits.shape[1], soft.dtype)
    return hard + soft - soft.detach()


class _MaskedWeight(torch.autograd.Function):
    """``weight * mask`` with FLGC's straight-through gradients to the logits, in one node.

    Same values and gradients as building ``mask = B_out @ B_in^T`` from straight-through
    one-hots (hard forward, softmax backward) and multiplying, but the hard mask and
    one-hots are reused while the assignment holds and the backward is a handful of ops:
    ``dL/dM = sum_kk dL/dW' * W``, ``dL/dB_out = dL/dM @ B_in``, ``dL/dB_in = dL/dM^T @ B_out``,
    then the softmax backward. At CIFAR scale a GPU is launch-bound, so ops count, not FLOPs.
    """

    @staticmethod
    def forward(ctx, weight, in_logits, out_logits, mask, b_in, b_out):  # type: ignore[override]
        ctx.save_for_backward(weight, in_logits, out_logits, mask, b_in, b_out)
        return weight * mask[:, :, None, None]

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        weight, in_logits, out_logits, mask, b_in, b_out = ctx.saved_tensors
        grad_weight = grad * mask[:, :, None, None] if ctx.needs_input_grad[0] else None
        grad_in = grad_out = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_mask = (grad * weight).sum(dim=(2, 3))  # (einsum: a slow batched matmul on CPU)
            grad_in = _softmax_backward(grad_mask.t() @ b_out, in_logits)
            grad_out = _softmax_backward(grad_mask @ b_in, out_logits)
        return grad_weight, grad_in, grad_out, None, None, None


def _softmax_backward(grad: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    soft = logits.softmax(dim=1)
    return torch.ops.aten._softmax_backward_data(grad.to(soft.dtype), soft, 1, soft.dtype)


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

    Example:
        >>> layer = FLGConv2d(32, 64, groups=4, kernel_size=1)
        >>> layer(torch.randn(2, 32, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
        >>> int(layer.connection_mask().sum())  # 4 groups of 8 channels x 16 filters
        512
    """

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
        # Last assignments (not saved: they follow from the logits); the device algorithm
        # falls back to them when its rounds do not settle.
        self.register_buffer("_in_groups", None, persistent=False)
        self.register_buffer("_out_groups", None, persistent=False)
        # (key, hard tensors) of the last assignment; the key changes with the logits (an
        # optimizer step bumps their version counters), so nothing is recomputed while the
        # logits stay as they are (evaluation, deployment, cost counting).
        self._hard: tuple[tuple, tuple[torch.Tensor, ...]] | None = None
        self._training_steps = 0

    def _hard_assignment(self) -> tuple[torch.Tensor, ...]:
        """(input groups, output groups, mask (N, C), B_in (C, G), B_out (N, G)), the hard
        tensors in the weight's dtype, recomputed only when the logits have changed. All of
        it runs on the logits' device without waiting on the host."""
        key = tuple((p._version, p.data_ptr(), p.device) for p in (self.in_logits, self.out_logits))
        key += (self.weight.dtype,)
        if self._hard is not None and self._hard[0] == key:
            return self._hard[1]
        with torch.no_grad():
            if self.balanced:
                in_groups, out_groups = device_balanced_assignments(
                    [self.in_logits, self.out_logits], [self._in_groups, self._out_groups]
                )
                self._in_groups, self._out_groups = in_groups, out_groups
            else:
                in_groups, out_groups = self.in_logits.argmax(dim=1), self.out_logits.argmax(dim=1)
            dtype = self.weight.dtype
            mask = (out_groups[:, None] == in_groups[None, :]).to(dtype)
            b_in, b_out = one_hot(in_groups, self.groups, dtype), one_hot(out_groups, self.groups, dtype)
            hard = (in_groups, out_groups, mask, b_in, b_out)
        self._hard = (key, hard)
        return hard

    def input_groups(self) -> torch.Tensor:
        """Group index of every input channel, (C,)."""
        return self._hard_assignment()[0]

    def output_groups(self) -> torch.Tensor:
        """Group index of every filter, (N,)."""
        return self._hard_assignment()[1]

    def connection_mask(self) -> torch.Tensor:
        """(N, C) 0/1 mask: 1 where filter and channel share a group. No gradient."""
        return self._hard_assignment()[2].clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self._hard
        if (
            self.training
            and self._training_steps % self.reassign_every
            and last is not None
            and last[0][-1] == self.weight.dtype
            and last[1][2].device == self.weight.device
        ):
            hard = last[1]  # between reassignments: the last one, even if the logits moved
        else:
            hard = self._hard_assignment()
        if self.training:
            self._training_steps += 1
            weight = _MaskedWeight.apply(self.weight, self.in_logits, self.out_logits, hard[2], hard[3], hard[4])
        else:
            weight = self.weight * hard[2][:, :, None, None]
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
            if self.bias is not None:
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
            if self.bias is not None:
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
            if self.bias is not None:
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
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_logit = any(part.endswith("logits") for part in name.split("."))
        (no_decay if is_logit or param.ndim <= 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
