"""The hard assignments of many FLGC layers, solved together once per change of their logits.

A training step recomputes every FLGC layer's assignment (the paper's recipe), and at CIFAR
scale a GPU is bound by the number of kernels a step launches, not by their work. So the
layers of a model share one :class:`AssignmentBatch`: the first layer that needs its
assignment after the logits have moved solves the assignments of every member whose logits
moved, in one batch (the deferred-acceptance rounds of :mod:`layers.deferred_acceptance`
launch once, the one-hots and softmaxes are built once, and each layer adds one product for
its mask); the others find theirs in their :class:`AssignmentCache`.

- :func:`hard_assignments`: the :class:`HardAssignment` of several (input, output) logit
  pairs, as one batch per device and kind; stateless.
- :class:`AssignmentBatch`: the layers solved together, each with its cache.
- :func:`share_assignments`: one batch for every FLGC layer of a module (``build_model`` calls
  it); :func:`forget_assignments`: drop what is cached (after CUDA-graph replays, which move
  the logits without telling their version counters).

A layer alone (not shared) is the one member of its own batch, so there is one code path.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

from .deferred_acceptance import batch_layout, solve, stack_logits
from .group_assignment import balanced_assignment

__all__ = [
    "AssignmentBatch",
    "AssignmentCache",
    "AssignmentMember",
    "AssignmentRequest",
    "HardAssignment",
    "forget_assignments",
    "hard_assignment",
    "hard_assignments",
    "share_assignments",
]


class HardAssignment(NamedTuple):
    """One assignment as the tensors a forward pass needs, on the logits' device (the float
    ones in the weight's dtype), and the softmax of the logits it was computed from (the
    straight-through gradient's; None once reused past them)."""

    in_groups: torch.Tensor  # (C,) int64: the group of every input channel
    out_groups: torch.Tensor  # (N,) int64: the group of every filter
    mask: torch.Tensor  # (N, C): 1 where a filter and a channel share a group
    b_in: torch.Tensor  # (C, G): one-hot of in_groups
    b_out: torch.Tensor  # (N, G): one-hot of out_groups
    soft_in: torch.Tensor | None = None  # (C, G): softmax of the input logits
    soft_out: torch.Tensor | None = None  # (N, G)


class AssignmentRequest(NamedTuple):
    """What one layer's assignment is computed from."""

    in_logits: torch.Tensor  # (C, G)
    out_logits: torch.Tensor  # (N, G)
    balanced: bool  # equal groups (else each row's argmax group)
    dtype: torch.dtype  # of the float tensors (the layer's weight)
    previous: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)  # last balanced groups

    def key(self) -> tuple[Any, ...]:
        """The logits' state (version counters, which an optimizer step or any in-place write
        bumps; storage; device) and the dtype: while it holds, so does the assignment."""
        return (*((p._version, p.data_ptr(), p.device) for p in (self.in_logits, self.out_logits)), self.dtype)

    def kind(self) -> tuple[Any, ...]:
        """Requests of one kind are solved as one batch."""
        rounds = self.balanced and self.in_logits.shape[1] > 1  # else: argmax (one group: all 0)
        return (self.in_logits.device, self.in_logits.dtype, self.dtype, rounds)


def hard_assignments(
    requests: Sequence[AssignmentRequest], host_loop_on_cpu: bool | None = None
) -> list[HardAssignment]:
    """The :class:`HardAssignment` of every request: balanced ones by deferred acceptance
    (:func:`layers.deferred_acceptance.solve`; on the CPU the host loop, which keeps
    ``previous`` while it is still stable), the others by each row's argmax; requests of one
    device and dtype solved as one batch. Waits on the host nowhere on a GPU.
    ``host_loop_on_cpu=False`` runs the rounds on the CPU too (tests)."""
    results: list[HardAssignment | None] = [None] * len(requests)
    kinds: dict[tuple[Any, ...], list[int]] = {}
    for i, request in enumerate(requests):
        kinds.setdefault(request.kind(), []).append(i)
    for members in kinds.values():
        batch = [requests[i] for i in members]
        previous = [side for request in batch for side in request.previous]
        hards = _solve(batch, previous, host_loop_on_cpu)
        for i, hard in zip(members, hards):
            results[i] = hard
    return [r for r in results if r is not None]


def hard_assignment(
    in_logits: torch.Tensor,
    out_logits: torch.Tensor,
    *,
    balanced: bool,
    dtype: torch.dtype,
    previous: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
) -> HardAssignment:
    """:func:`hard_assignments` of one layer."""
    return hard_assignments([AssignmentRequest(in_logits, out_logits, balanced, dtype, previous)])[0]


def _solve(
    requests: Sequence[AssignmentRequest],
    previous: Sequence[torch.Tensor | None],
    host_loop_on_cpu: bool | None = None,
) -> list[HardAssignment]:
    """The assignments of requests of one kind (:meth:`AssignmentRequest.kind`), as one batch;
    ``previous``: the last balanced groups of every side, or None."""
    sides = [side for request in requests for side in (request.in_logits, request.out_logits)]
    sizes = tuple((side.shape[0], side.shape[1]) for side in sides)
    rows = [r for r, _ in sizes]
    groups = max(g for _, g in sizes)
    device, _, dtype, rounds = requests[0].kind()
    # On the CPU the host loop is the faster (reading a value costs nothing there)
    on_device = rounds and (device.type != "cpu" if host_loop_on_cpu is None else not host_loop_on_cpu)
    with _no_autocast(device), _no_inference_mode(), torch.no_grad():
        stacked = stack_logits(sides, groups, sentinel=on_device)
        if not rounds:
            groups_of_rows = stacked.argmax(dim=1)
        elif on_device:
            groups_of_rows = solve(stacked, batch_layout(sizes, device), previous)
        else:
            groups_of_rows = torch.cat([balanced_assignment(side, prev) for side, prev in zip(sides, previous)])
        one_hots = (groups_of_rows.unsqueeze(1) == _arange(groups, device)).to(dtype)  # (rows, groups)
        with_sentinel = rows + [1] if on_device else rows
        pieces = zip(
            groups_of_rows.split(rows),
            one_hots.split(rows),
            one_hots.t().split(rows, dim=1),
            stacked.softmax(dim=1).split(with_sentinel),
        )
        narrowed = [_narrow(piece, g) for piece, (_, g) in zip(pieces, sizes)]
        hards = [
            HardAssignment(g_in, g_out, b_out.mm(b_in_t), b_in, b_out, soft_in, soft_out)
            for (g_in, b_in, b_in_t, soft_in), (g_out, b_out, _, soft_out) in zip(narrowed[::2], narrowed[1::2])
        ]
    return hards


def _narrow(piece: tuple[torch.Tensor, ...], groups: int) -> tuple[torch.Tensor, ...]:
    """A side's (groups, one-hot, one-hot transposed, softmax) without the columns of the
    batch's larger group counts."""
    g, b, b_t, soft = piece
    if b.shape[1] == groups:
        return piece
    return g, b[:, :groups], b_t[:groups], soft[:, :groups]


@functools.lru_cache(maxsize=32)
def _arange(groups: int, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):  # cached: not an inference tensor, whoever asks first
        return torch.arange(groups, device=device)


def _no_inference_mode() -> contextlib.AbstractContextManager[Any]:
    """Cached and reused in training: never inference tensors, even when asked in inference
    mode (entered only then: leaving it costs a call per step; it turns gradients back on,
    so ``torch.no_grad`` goes inside it)."""
    return torch.inference_mode(False) if torch.is_inference_mode_enabled() else contextlib.nullcontext()


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The masks are exact 0/1 products in the weight's dtype, also inside an autocast region."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class AssignmentCache:
    """The last :class:`HardAssignment` of one layer (or one choice of a supernet layer) and
    the key of the logits' state it was computed from: nothing is recomputed while they stay
    as they are (evaluation, deployment, cost counting, the sub-networks of a supernet step).
    """

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.last: HardAssignment | None = None  # the last one computed

    def fresh(self, key: tuple[Any, ...]) -> bool:
        return self.last is not None and self.key == key

    def store(self, key: tuple[Any, ...], hard: HardAssignment) -> None:
        self.key, self.last = key, hard

    def forget(self) -> None:
        """Recompute at the next request, even if the key looks the same."""
        self.key = None

    def get(self, request: AssignmentRequest) -> HardAssignment:
        """The assignment of ``request`` (solved alone), from the cache while its logits hold."""
        key = request.key()
        if not self.fresh(key):
            self.store(key, hard_assignments([request])[0])
        assert self.last is not None
        return self.last


class AssignmentMember(Protocol):
    """A layer whose assignment an :class:`AssignmentBatch` solves (:class:`layers.FLGConv2d`)."""

    assignment_cache: AssignmentCache
    assignment_batch: AssignmentBatch

    def assignment_request(self) -> AssignmentRequest: ...
    def seed_assignment(self, in_groups: torch.Tensor | None, out_groups: torch.Tensor | None) -> None: ...


class AssignmentBatch:
    """Layers whose assignments are solved together: :meth:`assignment` of one member solves
    every member whose logits moved since its last assignment, as one batch per device and
    dtype, and hands each its last balanced groups (:meth:`FLGConv2d.seed_assignment`).
    """

    host_loop_on_cpu: bool | None = None  # False: the device rounds on the CPU too (tests)

    def __init__(self) -> None:
        self.members: list[AssignmentMember] = []

    def add(self, member: AssignmentMember) -> None:
        """Make ``member`` one of this batch's (leaving the batch it was in)."""
        old = getattr(member, "assignment_batch", None)
        if old is not None and old is not self:
            old.members = [m for m in old.members if m is not member]
        if all(m is not member for m in self.members):
            self.members.append(member)
        member.assignment_batch = self

    def assignment(self, member: AssignmentMember) -> HardAssignment:
        """``member``'s hard assignment, solved (with every other member whose logits moved)
        only when its logits have changed."""
        request = member.assignment_request()
        if member.assignment_cache.fresh(request.key()):
            assert member.assignment_cache.last is not None
            return member.assignment_cache.last
        stale: dict[tuple[Any, ...], list[tuple[AssignmentMember, AssignmentRequest]]] = {}
        for m in self.members:
            r = request if m is member else m.assignment_request()
            if m is member or not m.assignment_cache.fresh(r.key()):
                stale.setdefault(r.kind(), []).append((m, r))
        for group in stale.values():
            self._solve(group)
        assert member.assignment_cache.last is not None
        return member.assignment_cache.last

    def _solve(self, group: list[tuple[AssignmentMember, AssignmentRequest]]) -> None:
        requests = [r for _, r in group]
        hards = _solve(requests, [side for r in requests for side in r.previous], self.host_loop_on_cpu)
        for (m, r), hard in zip(group, hards):
            m.assignment_cache.store(r.key(), hard)
            if r.balanced:  # the last balanced groups: kept by the host loop while still stable
                m.seed_assignment(hard.in_groups, hard.out_groups)


def share_assignments(module: nn.Module) -> AssignmentBatch:
    """One :class:`AssignmentBatch` for every FLGC layer of ``module`` (in module order), so
    that a step solves all their assignments at once. Returns it."""
    batch = AssignmentBatch()
    for m in module.modules():
        if isinstance(getattr(m, "assignment_batch", None), AssignmentBatch):
            batch.add(m)  # type: ignore[arg-type]
    return batch


def forget_assignments(module: nn.Module) -> None:
    """Make every FLGC assignment of ``module`` (layers and supernet choices) be recomputed at
    its next use: for code that changes logits behind their version counters (a CUDA graph's
    replay writes the parameters in place on the GPU, invisibly to the host)."""
    for m in module.modules():
        for value in vars(m).values():
            for cache in value.values() if isinstance(value, dict) else (value,):
                if isinstance(cache, AssignmentCache):
                    cache.forget()
