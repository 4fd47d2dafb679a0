"""FLGC's balanced assignment of many logit matrices at once, where they live, without waiting
on the host: vectorised deferred acceptance over one padded batch.

Every FLGC layer of a model has two sides (input channels, filters), each a (rows x groups)
logit matrix whose rows must be split into equal groups; the stable assignment under the
logits is the answer (see :func:`layers.balanced_assignment`, the host reference). Deferred
acceptance finds it in rounds, and at CIFAR scale a GPU is bound by how many kernels it is
given, not by their work: so all sides of all layers (any rows, any group count) are solved
as one batch, and each round is five kernels for the whole model instead of nine per side.

The batch is a (sides, rows, groups) int64 tensor of *keys*: the rank of each (row, group)
pair in the greedy's order (descending logit, ties by row-major position), so that smaller is
better and every side's preferences are strict and consistent. ``DEAD`` marks a pair that is
not a choice (rejected, or padding). To let one ``kthvalue`` find every group's threshold
although groups of different sides hold different numbers of rows, a side whose groups hold
fewer rows than the largest (``top``) gets *dummy* rows that always win a seat in their
group, so that every group has exactly ``top`` seats; when that would blow the batch up
(group counts that differ a lot), ``topk`` and a gather at each side's own capacity are used
instead.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["DEAD", "BatchLayout", "batch_layout", "default_rounds", "solve", "stack_logits"]

DEAD = 2**62  # key of a pair that is no (longer a) choice: larger than every rank
_DUMMY = -1  # key of a dummy row's pair: better than every rank


def default_rounds(groups: int) -> int:
    """Rounds after which :func:`solve` has settled for sides of at most ``groups`` groups:
    ``groups - 1``, always (see :func:`solve` for why)."""
    return max(groups - 1, 0)


@dataclass(frozen=True)
class BatchLayout:
    """Where the rows of every side sit in the padded batch, and the batch's constant tensors
    (built once per structure and device, see :func:`batch_layout`).

    Flat rows: the sides' rows one after another (``sum(rows)``), then one sentinel row.
    Padded rows: side ``s`` has ``padded`` rows, its own first, then its dummies, then dead.
    """

    sizes: tuple[tuple[int, int], ...]  # (rows, groups) of every side
    groups: int  # the most groups of any side
    padded: int  # rows per side in the batch
    top: int  # seats per group in the batch (the largest rows / groups with dummies)
    dummies: bool  # equal seats through dummy rows (else: per-side capacities)
    source_row: torch.Tensor  # (sides * padded,) flat row of each padded row (sentinel: none)
    keys: torch.Tensor  # (sides, padded, groups): DEAD, _DUMMY, or 0 where the rank goes
    ranked: torch.Tensor  # (sides, padded, groups) bool: where the rank goes
    dead: torch.Tensor  # (sides, padded, groups): all DEAD, the blank proposals are written on
    capacity: torch.Tensor  # (sides, 1, groups): seats - 1 of every group (the threshold's index)
    position: torch.Tensor  # (sum(rows),) index of each flat row in the (sides, padded) batch
    side: torch.Tensor  # (sum(rows),) side of each flat row
    slot: torch.Tensor  # (sides, padded): group of the p-th row of a side packed in order

    @property
    def sides(self) -> int:
        return len(self.sizes)

    @property
    def rows(self) -> int:
        return sum(rows for rows, _ in self.sizes)


@functools.lru_cache(maxsize=64)
def batch_layout(sizes: tuple[tuple[int, int], ...], device: torch.device) -> BatchLayout:
    """The :class:`BatchLayout` of sides of these (rows, groups), each with at least two
    groups that divide its rows, on ``device`` (cached: a model has one structure)."""
    with torch.inference_mode(False):  # cached: never inference tensors, whoever asks first
        return _batch_layout(sizes, device)


def _batch_layout(sizes: tuple[tuple[int, int], ...], device: torch.device) -> BatchLayout:
    groups = max(g for _, g in sizes)
    top = max(rows // g for rows, g in sizes)
    plain = max(rows for rows, _ in sizes)
    with_dummies = top * max(g for _, g in sizes)
    dummies = with_dummies <= 2 * plain  # uniform group counts: no growth at all
    padded = with_dummies if dummies else plain
    sides = len(sizes)
    keys = torch.full((sides, padded, groups), DEAD, dtype=torch.long)
    ranked = torch.zeros(sides, padded, groups, dtype=torch.bool)
    source_row = torch.full((sides, padded), sum(rows for rows, _ in sizes), dtype=torch.long)
    capacity = torch.zeros(sides, 1, groups, dtype=torch.long)
    slot = torch.zeros(sides, padded, dtype=torch.long)
    position: list[int] = []
    side_of_row: list[int] = []
    start = 0
    for s, (rows, g) in enumerate(sizes):
        cap = rows // g
        ranked[s, :rows, :g] = True
        source_row[s, :rows] = torch.arange(start, start + rows)
        slot[s, :rows] = torch.arange(rows) // cap
        capacity[s, 0, :] = (top if dummies else cap) - 1
        if dummies:  # top - cap dummies per group, each a choice of its own group only
            extra = top - cap
            for group in range(g):
                keys[s, rows + group * extra : rows + (group + 1) * extra, group] = _DUMMY
        position += range(s * padded, s * padded + rows)
        side_of_row += [s] * rows
        start += rows
    to = functools.partial(torch.Tensor.to, device=device)
    return BatchLayout(
        sizes=sizes,
        groups=groups,
        padded=padded,
        top=top,
        dummies=dummies,
        source_row=to(source_row.flatten()),
        keys=to(keys),
        ranked=to(ranked),
        dead=to(torch.full((sides, padded, groups), DEAD, dtype=torch.long)),
        capacity=to(capacity),
        position=to(torch.tensor(position, dtype=torch.long)),
        side=to(torch.tensor(side_of_row, dtype=torch.long)),
        slot=to(slot),
    )


def stack_logits(logits: Sequence[torch.Tensor], groups: int, sentinel: bool) -> torch.Tensor:
    """The sides' logits one after another, (sum(rows) [+ 1], groups): columns a side does not
    have and the optional sentinel row are -inf. One ``cat`` (plus a pad per side with fewer
    groups); no gradient is tracked by the caller's choice (``torch.no_grad``)."""
    parts = [
        side if side.shape[1] == groups else torch.nn.functional.pad(side, (0, groups - side.shape[1]), value=-math.inf)
        for side in logits
    ]
    if sentinel:
        parts.append(torch.full((1, groups), -math.inf, dtype=logits[0].dtype, device=logits[0].device))
    return torch.cat(parts)


@torch.no_grad()
def solve(
    stacked: torch.Tensor,
    layout: BatchLayout,
    previous: Sequence[torch.Tensor | None] = (),
    rounds: int | None = None,
) -> torch.Tensor:
    """Group of every flat row (``sum(rows)``,) int64: the stable balanced assignment of each
    side, by deferred acceptance on ``stacked``'s device, without reading a value on the host.

    ``stacked``: :func:`stack_logits` with the sentinel row. In each round every row proposes
    to its best group that has not turned it down, every group keeps its best proposers up to
    its capacity, and a full group turns down every pair worse than the worst it keeps (a
    group's worst kept only improves, so such a pair would be rejected when proposed). The
    result is the unique stable assignment, the one :func:`layers.balanced_assignment` returns,
    after at most G - 1 rounds: order the groups by when the greedy fills them; the first
    group's members are the best proposers of round 1 (before it fills, every row gets its
    first choice), so after round 1 it holds them and has turned down every other pair that
    comes after its filling; and if after round k the first k groups are done so, every
    member of group k+1 has lost its better pairs (all in those groups, after their filling)
    and proposes to it in round k+1, while every other row that proposes to it comes after
    its filling (a row that comes before would sit in a group it prefers, and a pair of the
    stable assignment is never turned down). The last group takes the rows that are left.

    ``rounds``: fewer than that (for tests of the fallback) may not settle; a side that has
    not keeps ``previous`` (one tensor or None per side), or without one its rows packed into
    groups in the order of their last proposals, which is balanced too.
    """
    sides, padded, groups = layout.sides, layout.padded, layout.groups
    scores = torch.nan_to_num(stacked.double(), nan=-1e300, posinf=1e300, neginf=-1e300)
    scores = scores.index_select(0, layout.source_row).view(sides, padded * groups)
    # keys: each pair's rank in a stable descending sort (row-major ties, as the greedy)
    rank = scores.argsort(dim=1, descending=True, stable=True).argsort(dim=1).view(sides, padded, groups)
    alive = torch.where(layout.ranked, rank, layout.keys)
    settled = default_rounds(groups)
    rounds = settled if rounds is None else min(rounds, settled)
    for _ in range(rounds):
        alive = alive.masked_fill(alive > _proposals(alive, layout)[0], DEAD)
    if rounds == settled:
        best, choice = alive.min(dim=2, keepdim=True)
        return torch.take(choice, layout.position)
    overflow, best, choice = _proposals(alive, layout, beyond=1)  # a proposal beyond the seats
    unsettled = (overflow < DEAD).flatten(1).any(dim=1)  # (sides,)
    fallback = _previous_or_packed(previous, best, choice, layout)
    return torch.where(torch.take(unsettled, layout.side), fallback, torch.take(choice, layout.position))


def _proposals(alive: torch.Tensor, layout: BatchLayout, beyond: int = 0) -> tuple[torch.Tensor, ...]:
    """One round's proposals: (the key of every group's (seats + ``beyond``)-th best proposal,
    (sides, 1, groups), DEAD where it has fewer; each row's best key; its group)."""
    best, choice = alive.min(dim=2, keepdim=True)  # each row's proposal (a dead row's: DEAD)
    proposals = layout.dead.scatter(2, choice, best)
    if layout.dummies:  # every group has ``top`` seats
        kept = proposals.kthvalue(layout.top + beyond, dim=1, keepdim=True).values
    else:
        k = layout.top + beyond
        kept = proposals.topk(k, dim=1, largest=False).values.gather(1, layout.capacity + beyond)
    return kept, best, choice


def _previous_or_packed(
    previous: Sequence[torch.Tensor | None], best: torch.Tensor, choice: torch.Tensor, layout: BatchLayout
) -> torch.Tensor:
    """Per side its previous groups, or (without them) its rows packed into groups in the
    order of their last proposals: (group, key) ascending, dummies and dead rows last."""
    key = choice.squeeze(2) * (layout.padded * layout.groups) + best.squeeze(2)  # keys < padded * groups
    order = torch.where(layout.ranked.any(dim=2), key, DEAD).argsort(dim=1, stable=True)
    packed = torch.empty_like(order).scatter_(1, order, layout.slot)
    pieces = torch.take(packed, layout.position).split([rows for rows, _ in layout.sizes])
    last = list(previous) + [None] * (len(pieces) - len(previous))
    return torch.cat([piece if p is None else p.to(piece.device) for p, piece in zip(last, pieces)])
