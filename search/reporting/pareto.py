"""Pareto-front utilities for multi-objective architecture search.

Every function takes a matrix of objective values ``points`` of shape
``(n, k)`` (anything :func:`numpy.asarray` accepts) together with the
optimisation *sense* of each column, e.g. ``("max", "min")`` for
(accuracy, MFLOPs).  Internally everything is converted to a pure
minimisation problem by negating the ``"max"`` columns
(:func:`to_minimization`).

Dominance is the usual Pareto dominance: ``a`` dominates ``b`` when it is no
worse in every objective and strictly better in at least one.  Consequently
two identical points never dominate each other, so all copies of a
non-dominated point are reported as non-dominated.

Hypervolume computations are delegated to :mod:`moocore` (exact algorithms,
``O(n log n)`` in 2-D and 3-D).  The reference point is always given in the
*original* senses (e.g. ``(0.0, dense_mflops)``), and only points that
strictly dominate it contribute.

Rows containing NaN are rejected with a :class:`ValueError` naming the row.
"""

from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "to_minimization",
    "dominates",
    "pareto_mask",
    "non_dominated_sort",
    "crowding_distance",
    "hypervolume",
    "hypervolume_history",
    "hypervolume_contributions",
]

_VALID_SENSES = ("max", "min")


# ---------------------------------------------------------------------------
# validation / conversion helpers
# ---------------------------------------------------------------------------
def _signs(senses: Sequence[str]) -> NDArray[np.float64]:
    """Return +1 for "min" columns and -1 for "max" columns."""
    if isinstance(senses, (str, bytes)):
        raise ValueError(f"senses must be a sequence such as ('max', 'min'), got the string {senses!r}")
    senses = list(senses)
    if not senses:
        raise ValueError("senses must contain at least one objective")
    for j, s in enumerate(senses):
        if not isinstance(s, str) or s not in _VALID_SENSES:
            raise ValueError(f"senses[{j}] = {s!r} is invalid; expected 'max' or 'min'")
    return np.array([-1.0 if s == "max" else 1.0 for s in senses])


def _as_matrix(points: ArrayLike, k: int) -> NDArray[np.float64]:
    """Convert ``points`` to a float (n, k) matrix, rejecting NaN rows."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0 and arr.ndim <= 2:
        if arr.ndim == 2 and arr.shape[1] not in (0, k):
            raise ValueError(f"points have {arr.shape[1]} columns but {k} senses were given")
        return np.empty((0, k), dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"points must be a 2-D array of shape (n, k), got shape {arr.shape}")
    if arr.shape[1] != k:
        raise ValueError(f"points have {arr.shape[1]} columns but {k} senses were given")
    nan_rows = np.flatnonzero(np.isnan(arr).any(axis=1))
    if nan_rows.size:
        raise ValueError(
            f"points contain NaN in row {int(nan_rows[0])}"
            + (f" (rows with NaN: {nan_rows[:10].tolist()})" if nan_rows.size > 1 else "")
        )
    return arr


def _as_vector(x: ArrayLike, k: int, name: str) -> NDArray[np.float64]:
    """Convert a single point to a float (k,) vector, rejecting NaN."""
    v = np.asarray(x, dtype=np.float64)
    if v.shape != (k,):
        raise ValueError(f"{name} must have shape ({k},), got {v.shape}")
    if np.isnan(v).any():
        raise ValueError(f"{name} contains NaN: {v.tolist()}")
    return v


def _ref_min(reference: ArrayLike, signs: NDArray[np.float64]) -> NDArray[np.float64]:
    return _as_vector(reference, signs.size, "reference") * signs


def _strictly_inside(pts_min: NDArray[np.float64], ref_min: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Rows (minimisation space) that strictly dominate the reference point."""
    return np.all(pts_min < ref_min, axis=1)


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------
def to_minimization(points: ArrayLike, senses: Sequence[str]) -> NDArray[np.float64]:
    """Return a float copy of ``points`` with every ``"max"`` column negated.

    Raises ``ValueError`` for senses other than ``"max"``/``"min"``, for a
    column-count mismatch, or for rows containing NaN.

    >>> to_minimization([[0.9, 10.0]], ("max", "min")).tolist()
    [[-0.9, 10.0]]
    """
    signs = _signs(senses)
    return _as_matrix(points, signs.size) * signs


def dominates(a: ArrayLike, b: ArrayLike, senses: Sequence[str]) -> bool:
    """True if ``a`` is no worse than ``b`` in every objective and strictly better in one.

    >>> dominates((0.9, 10), (0.8, 10), ("max", "min"))
    True
    >>> dominates((0.9, 10), (0.9, 10), ("max", "min"))
    False
    """
    signs = _signs(senses)
    am = _as_vector(a, signs.size, "a") * signs
    bm = _as_vector(b, signs.size, "b") * signs
    return bool(np.all(am <= bm) and np.any(am < bm))


def pareto_mask(points: ArrayLike, senses: Sequence[str]) -> NDArray[np.bool_]:
    """Boolean mask of the non-dominated rows (``O(n log n)`` for k <= 3).

    Duplicates of a non-dominated point are all kept (identical points do not
    dominate each other).  Empty input gives an empty mask.

    >>> pts = [(0.9, 10.0), (0.8, 5.0), (0.7, 20.0), (0.9, 10.0)]
    >>> pareto_mask(pts, ("max", "min")).tolist()
    [True, True, False, True]
    """
    pm = to_minimization(points, senses)
    n, k = pm.shape
    if n == 0:
        return np.zeros(0, dtype=bool)
    if k == 1:
        return pm[:, 0] == pm[:, 0].min()
    return np.asarray(moocore.is_nondominated(pm, keep_weakly=True), dtype=bool)


def non_dominated_sort(points: ArrayLike, senses: Sequence[str]) -> NDArray[np.int64]:
    """Pareto rank of each row: 0 = first (non-dominated) front, 1 = second, ...

    Identical points receive the same rank.

    >>> non_dominated_sort([(0.9, 10), (0.8, 5), (0.7, 20), (0.6, 30)], ("max", "min")).tolist()
    [0, 0, 1, 2]
    """
    pm = to_minimization(points, senses)
    n, k = pm.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if k == 1:
        # rank = index of the value among the sorted distinct values
        _, inv = np.unique(pm[:, 0], return_inverse=True)
        return inv.reshape(-1).astype(np.int64)
    return np.asarray(moocore.pareto_rank(pm), dtype=np.int64)


def crowding_distance(points: ArrayLike, senses: Sequence[str]) -> NDArray[np.float64]:
    """NSGA-II crowding distance of each row within the given set.

    For every objective the rows are (stably) sorted; the first and last rows
    get ``inf`` and each interior row adds the normalised gap between its two
    neighbours, ``(f[i+1] - f[i-1]) / (f_max - f_min)`` (0 when the objective
    is constant).  Sets of at most two rows are all ``inf``.  The result does
    not depend on the senses (they are only validated).

    >>> crowding_distance([(0.9, 10), (0.8, 5), (0.85, 7)], ("max", "min")).tolist()
    [inf, inf, 2.0]
    """
    pm = to_minimization(points, senses)
    n, k = pm.shape
    dist = np.zeros(n, dtype=np.float64)
    if n == 0:
        return dist
    if n <= 2:
        dist[:] = np.inf
        return dist
    for j in range(k):
        col = pm[:, j]
        order = np.argsort(col, kind="stable")
        sorted_col = col[order]
        span = sorted_col[-1] - sorted_col[0]
        dist[order[0]] = np.inf
        dist[order[-1]] = np.inf
        if np.isfinite(span) and span > 0:
            gaps = (sorted_col[2:] - sorted_col[:-2]) / span
            dist[order[1:-1]] += gaps
    return dist


def hypervolume(points: ArrayLike, senses: Sequence[str], reference: ArrayLike) -> float:
    """Hypervolume dominated by ``points`` and bounded by ``reference``.

    ``reference`` is given in the original senses (e.g. ``(0.0, dense_mflops)``
    for ``("max", "min")``).  Points that do not strictly dominate the
    reference contribute nothing.  Empty input gives ``0.0``.

    >>> pts = [(0.9, 10.0), (0.8, 5.0), (0.7, 20.0)]
    >>> hypervolume(pts, ("max", "min"), reference=(0.0, 30.0))
    22.0
    """
    signs = _signs(senses)
    pm = _as_matrix(points, signs.size) * signs
    ref = _ref_min(reference, signs)
    pm = pm[_strictly_inside(pm, ref)]
    if pm.shape[0] == 0:
        return 0.0
    return float(moocore.hypervolume(pm, ref=ref))


def hypervolume_history(points: ArrayLike, senses: Sequence[str], reference: ArrayLike) -> NDArray[np.float64]:
    """Hypervolume of ``points[: i + 1]`` for every ``i`` (in the given order).

    This is the hypervolume curve after each finished trial.  It is computed
    incrementally: the current front is only updated (and its hypervolume
    recomputed) when a new point strictly dominates the reference and is not
    weakly dominated by the current front; otherwise the previous value is
    repeated.  The curve is monotone non-decreasing.

    >>> hypervolume_history([(0.7, 20), (0.9, 10), (0.6, 25), (0.8, 5)], ("max", "min"), (0, 30)).tolist()
    [7.0, 18.0, 18.0, 22.0]
    """
    signs = _signs(senses)
    pm = _as_matrix(points, signs.size) * signs
    ref = _ref_min(reference, signs)
    n = pm.shape[0]
    out = np.zeros(n, dtype=np.float64)
    inside = _strictly_inside(pm, ref)
    front = np.empty((0, signs.size), dtype=np.float64)
    current = 0.0
    for i in range(n):
        if inside[i]:
            p = pm[i]
            if front.shape[0] == 0 or not np.any(np.all(front <= p, axis=1)):
                # drop front members that the new point dominates, then add it
                keep = ~np.all(p <= front, axis=1)
                front = np.vstack([front[keep], p])
                # guard against floating-point round-off breaking monotonicity
                current = max(current, float(moocore.hypervolume(front, ref=ref)))
        out[i] = current
    return out


def hypervolume_contributions(points: ArrayLike, senses: Sequence[str], reference: ArrayLike) -> NDArray[np.float64]:
    """Exclusive hypervolume contribution ``hv(all) - hv(all without i)`` of each row.

    Dominated points and duplicated points contribute 0; points that do not
    strictly dominate the reference contribute 0.  A dominated point still
    reduces the contribution of the point that dominates it (exact
    definition, ``moocore.hv_contributions(..., ignore_dominated=False)``).

    >>> hypervolume_contributions([(8, 10), (4, 5), (2, 20)], ("max", "min"), (0, 30)).tolist()
    [80.0, 20.0, 0.0]
    """
    signs = _signs(senses)
    pm = _as_matrix(points, signs.size) * signs
    ref = _ref_min(reference, signs)
    n, k = pm.shape
    out = np.zeros(n, dtype=np.float64)
    inside = np.flatnonzero(_strictly_inside(pm, ref))
    if inside.size == 0:
        return out
    sub = pm[inside]
    if k == 1:
        vals = sub[:, 0]
        order = np.argsort(vals, kind="stable")
        best = vals[order[0]]
        nxt = vals[order[1]] if vals.size > 1 else ref[0]
        if nxt > best:  # unique minimum; otherwise duplicates -> 0
            out[inside[order[0]]] = nxt - best
        return out
    contrib = moocore.hv_contributions(sub, ref=ref, ignore_dominated=False)
    out[inside] = np.maximum(np.asarray(contrib, dtype=np.float64), 0.0)
    return out
