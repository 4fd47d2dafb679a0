"""FLGC's balanced assignment of rows (input channels or filters) to G equal groups: the
stable assignment under the logits, shared by every layer that learns one
(:class:`layers.FLGConv2d`, and :class:`layers.SuperConv2d` for each group count it holds).

- :func:`balanced_assignment`: a host loop, the reference everything is tested against;
- :func:`device_balanced_assignment(s) <device_balanced_assignments>`: the same assignment
  where the logits live, for many logit matrices at once, without waiting on the host
  (:mod:`layers.deferred_acceptance` holds the batched rounds);
- :func:`is_stable_assignment`: the check that lets a still-stable previous one be kept.

The hard tensors a forward pass builds from the groups are :mod:`layers.assignment_batch`'s,
the straight-through masked weight :mod:`layers.straight_through`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .deferred_acceptance import batch_layout, default_rounds, solve, stack_logits

__all__ = [
    "balanced_assignment",
    "default_rounds",
    "device_balanced_assignment",
    "device_balanced_assignments",
    "is_stable_assignment",
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


@torch.no_grad()
def device_balanced_assignment(
    logits: torch.Tensor,
    previous: torch.Tensor | None = None,
    rounds: int | None = None,
    host_loop_on_cpu: bool | None = None,
) -> torch.Tensor:
    """The stable balanced assignment of :func:`balanced_assignment`, computed where the
    logits live without ever waiting on the host (no ``.item()``, no copy, no loop that
    depends on values), so a GPU training step never stalls on it: vectorised deferred
    acceptance (:func:`layers.deferred_acceptance.solve`), whose default rounds always settle.
    With fewer ``rounds`` an unsettled result is ``previous`` (a balanced assignment), or
    without one the rows packed into groups in the order of their last proposals, balanced
    too. Returns group indices (R,), int64, on the logits' device.
    """
    return device_balanced_assignments([logits], [previous], rounds, host_loop_on_cpu)[0]


@torch.no_grad()
def device_balanced_assignments(
    logits: Sequence[torch.Tensor],
    previous: Sequence[torch.Tensor | None],
    rounds: int | None = None,
    host_loop_on_cpu: bool | None = None,
) -> list[torch.Tensor]:
    """:func:`device_balanced_assignment` of several logit matrices on one device, of any
    rows and group counts, solved together as one batch: the rounds launch once for all of
    them (a GPU at CIFAR scale is bound by launches, not work), ``default_rounds`` of the
    largest group count.

    On the CPU (unless ``host_loop_on_cpu=False``) :func:`balanced_assignment` answers
    instead: the same assignment, faster there, and exact even where the rounds would not
    settle."""
    for side in logits:
        rows, groups = side.shape
        if groups < 1 or rows % groups:
            raise ValueError(f"{rows} rows cannot be split into {groups} equal groups")
    device = logits[0].device
    # On the CPU reading a value costs nothing (no queue of device work to drain), and the
    # host loop, which returns the same assignment, is the faster there.
    if device.type == "cpu" if host_loop_on_cpu is None else host_loop_on_cpu:
        return [balanced_assignment(side, prev) for side, prev in zip(logits, previous)]
    results: list[torch.Tensor | None] = [
        torch.zeros(side.shape[0], dtype=torch.long, device=device) if side.shape[1] == 1 else None for side in logits
    ]
    solved = [i for i, r in enumerate(results) if r is None]
    if solved:
        sizes = tuple((logits[i].shape[0], logits[i].shape[1]) for i in solved)
        layout = batch_layout(sizes, device)
        stacked = stack_logits([logits[i] for i in solved], layout.groups, sentinel=True)
        groups_of_rows = solve(stacked, layout, [previous[i] for i in solved], rounds)
        for i, piece in zip(solved, groups_of_rows.split([rows for rows, _ in sizes])):
            results[i] = piece
    return [r for r in results if r is not None]
