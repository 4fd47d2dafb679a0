"""FLGC's learned assignment of input channels and filters to G groups, shared by every
layer that learns one (:class:`layers.FLGConv2d`, and :class:`layers.SuperConv2d` for each
group count it holds).

- The balanced assignment: every group gets exactly R/G rows, the stable assignment under
  the logits. :func:`device_balanced_assignment` computes it where the logits live without
  waiting on the host; :func:`balanced_assignment` is the same assignment by a host loop,
  the reference it is tested against.
- :class:`HardAssignment`: the hard tensors a forward pass needs (groups, the connection mask
  ``M = B_out @ B_in^T``, the one-hots ``B_in``, ``B_out``), computed by
  :func:`hard_assignment` and kept by an :class:`AssignmentCache` while the logits hold.
- :func:`masked_weight`: ``weight * M`` with the straight-through gradient to the logits
  (hard forward, softmax backward), in one autograd node.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = [
    "AssignmentCache",
    "HardAssignment",
    "balanced_assignment",
    "default_rounds",
    "device_balanced_assignment",
    "device_balanced_assignments",
    "hard_assignment",
    "is_stable_assignment",
    "masked_weight",
    "one_hot",
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
    def forward(ctx, weight, in_logits, out_logits, mask, b_in, b_out):
        ctx.save_for_backward(weight, in_logits, out_logits, mask, b_in, b_out)
        return weight * mask[:, :, None, None]

    @staticmethod
    def backward(ctx, grad):
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


class HardAssignment(NamedTuple):
    """One assignment as the hard tensors a forward pass needs, on the logits' device (the
    float ones in the weight's dtype)."""

    in_groups: torch.Tensor  # (C,) int64: the group of every input channel
    out_groups: torch.Tensor  # (N,) int64: the group of every filter
    mask: torch.Tensor  # (N, C): 1 where a filter and a channel share a group
    b_in: torch.Tensor  # (C, G): one-hot of in_groups
    b_out: torch.Tensor  # (N, G): one-hot of out_groups


@torch.no_grad()
def hard_assignment(
    in_logits: torch.Tensor,
    out_logits: torch.Tensor,
    *,
    balanced: bool,
    dtype: torch.dtype,
    previous: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
) -> HardAssignment:
    """The hard assignment of ``in_logits`` (C x G) and ``out_logits`` (N x G): balanced, both
    sides solved together (:func:`device_balanced_assignments`, which falls back to
    ``previous``, the last balanced (input, output) groups, where its rounds do not settle),
    or each row's argmax group. Runs on the logits' device without waiting on the host."""
    groups = in_logits.shape[1]
    if balanced:
        in_groups, out_groups = device_balanced_assignments([in_logits, out_logits], list(previous))
    else:
        in_groups, out_groups = in_logits.argmax(dim=1), out_logits.argmax(dim=1)
    mask = (out_groups[:, None] == in_groups[None, :]).to(dtype)
    b_in, b_out = one_hot(in_groups, groups, dtype), one_hot(out_groups, groups, dtype)
    return HardAssignment(in_groups, out_groups, mask, b_in, b_out)


class AssignmentCache:
    """The :class:`HardAssignment` of one pair of logits, recomputed only when they change.

    The last result is kept with a key of the logits' state (version counters, which an
    optimizer step or any in-place write bumps; storage; device) and the dtype, so nothing is
    recomputed while the logits stay as they are: evaluation, deployment, cost counting, the
    several sub-networks of one supernet step. The last balanced groups, which the device
    algorithm falls back to, stay with the layer as buffers, so that they follow it to
    another device.
    """

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.last: HardAssignment | None = None  # the last one computed

    def get(
        self,
        in_logits: torch.Tensor,
        out_logits: torch.Tensor,
        *,
        balanced: bool,
        dtype: torch.dtype,
        previous: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
    ) -> HardAssignment:
        """:func:`hard_assignment` of the logits, from the cache while they hold."""
        key = (*((p._version, p.data_ptr(), p.device) for p in (in_logits, out_logits)), dtype)
        if self.last is None or self.key != key:
            self.last = hard_assignment(in_logits, out_logits, balanced=balanced, dtype=dtype, previous=previous)
            self.key = key
        return self.last


def masked_weight(
    weight: torch.Tensor, in_logits: torch.Tensor, out_logits: torch.Tensor, hard: HardAssignment, training: bool
) -> torch.Tensor:
    """``weight * mask`` (the mask over the kernel's spatial dimensions). In ``training``, one
    autograd node that also gives the logits FLGC's straight-through gradient (that of
    building the mask from :func:`straight_through_one_hot` one-hots)."""
    if training:
        return _MaskedWeight.apply(weight, in_logits, out_logits, hard.mask, hard.b_in, hard.b_out)
    return weight * hard.mask[:, :, None, None]
