"""Tests for search.reporting.pareto against brute-force reference implementations."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.reporting.pareto import (
    crowding_distance,
    dominates,
    hypervolume,
    hypervolume_contributions,
    hypervolume_history,
    non_dominated_sort,
    pareto_mask,
    to_minimization,
)

# 0.05-0.3 s here: a bound 100 times that catches a quadratic pure-Python rewrite (minutes at
# 10k points), never a busy machine.
SCALE_SECONDS = 30.0
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------
# brute-force references (all work in minimisation space)
# ---------------------------------------------------------------------------
def _to_min(points, senses) -> np.ndarray:
    pts = np.asarray(points, dtype=float).reshape(-1, len(senses))
    signs = np.array([-1.0 if s == "max" else 1.0 for s in senses])
    return pts * signs


def bf_dom(a, b) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def bf_mask(points, senses) -> list[bool]:
    pm = _to_min(points, senses).tolist()
    return [not any(bf_dom(q, p) for j, q in enumerate(pm) if j != i) for i, p in enumerate(pm)]


def bf_ranks(points, senses) -> list[int]:
    pm = _to_min(points, senses).tolist()
    remaining = set(range(len(pm)))
    ranks = [-1] * len(pm)
    r = 0
    while remaining:
        front = [i for i in remaining if not any(bf_dom(pm[j], pm[i]) for j in remaining if j != i)]
        for i in front:
            ranks[i] = r
        remaining -= set(front)
        r += 1
    return ranks


def _inside(pm: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return pm[np.all(pm < ref, axis=1)]


def bf_hv_staircase_2d(points, senses, reference) -> float:
    """Exact 2-D hypervolume by sorting on x and summing the staircase."""
    pm = _to_min(points, senses)
    ref = _to_min([reference], senses)[0]
    pm = _inside(pm, ref)
    if len(pm) == 0:
        return 0.0
    pm = pm[np.lexsort((pm[:, 1], pm[:, 0]))]
    xs = np.append(pm[:, 0], ref[0])
    total, best_y = 0.0, ref[1]
    for i in range(len(pm)):
        best_y = min(best_y, pm[i, 1])
        total += (xs[i + 1] - xs[i]) * (ref[1] - best_y)
    return total


def bf_hv_incl_excl(points, senses, reference) -> float:
    """Exact hypervolume by inclusion-exclusion over all subsets (small n)."""
    pm = _to_min(points, senses)
    ref = _to_min([reference], senses)[0]
    pm = _inside(pm, ref)
    n = len(pm)
    assert n <= 10
    total = 0.0
    for size in range(1, n + 1):
        sign = 1.0 if size % 2 else -1.0
        for subset in itertools.combinations(range(n), size):
            corner = pm[list(subset)].max(axis=0)
            total += sign * float(np.prod(ref - corner))
    return total


def bf_hv_grid(points, senses, reference) -> float:
    """Exact hypervolume by decomposing space into cells of the distinct coordinates."""
    pm = _to_min(points, senses)
    ref = _to_min([reference], senses)[0]
    pm = _inside(pm, ref)
    if len(pm) == 0:
        return 0.0
    k = pm.shape[1]
    edges = [np.unique(np.append(pm[:, j], ref[j])) for j in range(k)]
    lows = np.meshgrid(*[e[:-1] for e in edges], indexing="ij")
    widths = np.meshgrid(*[np.diff(e) for e in edges], indexing="ij")
    lows = np.stack([g.ravel() for g in lows], axis=1)  # (cells, k)
    vol = np.prod(np.stack([w.ravel() for w in widths], axis=1), axis=1)
    covered = np.any(np.all(pm[None, :, :] <= lows[:, None, :], axis=2), axis=1)
    return float(vol[covered].sum())


# ---------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------
@st.composite
def fronts(draw, k=None, max_n=8, min_n=0):
    """Small point sets on a coarse integer grid (forces ties and duplicates)."""
    k = draw(st.sampled_from([2, 3])) if k is None else k
    senses = tuple(draw(st.lists(st.sampled_from(["max", "min"]), min_size=k, max_size=k)))
    n = draw(st.integers(min_n, max_n))
    vals = st.integers(0, 6)
    pts = draw(st.lists(st.lists(vals, min_size=k, max_size=k), min_size=n, max_size=n))
    # reference: "worst" side of the grid for each sense, sometimes inside the cloud
    ref = tuple(float(draw(st.integers(-1, 3)) if s == "max" else draw(st.integers(3, 7))) for s in senses)
    scale = draw(st.sampled_from([1.0, 0.5, 0.25]))
    return np.array(pts, dtype=float).reshape(n, k) * scale, senses, tuple(r * scale for r in ref)


def random_front(rng, n, k):
    pts = rng.random((n, k))
    # inject exact duplicates and single-coordinate ties
    if n >= 4:
        pts[1] = pts[0]
        pts[3, 0] = pts[2, 0]
    return pts


HAND_PTS = [(0.9, 10.0), (0.8, 5.0), (0.7, 20.0)]
HAND_SENSES = ("max", "min")
HAND_REF = (0.0, 30.0)


# ---------------------------------------------------------------------------
# known hand cases
# ---------------------------------------------------------------------------
def test_hand_case_mask_and_hv():
    assert pareto_mask(HAND_PTS, HAND_SENSES).tolist() == [True, True, False]
    assert hypervolume(HAND_PTS, HAND_SENSES, HAND_REF) == pytest.approx(0.9 * 20 + 0.8 * 5)
    assert hypervolume(HAND_PTS, HAND_SENSES, HAND_REF) == pytest.approx(22.0)
    assert non_dominated_sort(HAND_PTS, HAND_SENSES).tolist() == [0, 0, 1]
    c = hypervolume_contributions(HAND_PTS, HAND_SENSES, HAND_REF)
    assert c == pytest.approx([22.0 - 0.8 * 25, 22.0 - 0.9 * 20, 0.0])
    h = hypervolume_history(HAND_PTS, HAND_SENSES, HAND_REF)
    assert h == pytest.approx([0.9 * 20, 22.0, 22.0])


def test_to_minimization_and_dominates():
    assert to_minimization([[0.9, 10.0]], ("max", "min")).tolist() == [[-0.9, 10.0]]
    assert dominates((0.9, 10), (0.8, 10), HAND_SENSES)
    assert dominates((0.9, 9), (0.8, 10), HAND_SENSES)
    assert not dominates((0.9, 10), (0.9, 10), HAND_SENSES)
    assert not dominates((0.9, 11), (0.8, 10), HAND_SENSES)
    assert dominates((1, 2), (1, 3), ("min", "min"))
    assert dominates((1, 3), (1, 2), ("min", "max"))


def test_duplicates_all_nondominated():
    pts = [(0.9, 10), (0.9, 10), (0.8, 12), (0.95, 20), (0.95, 20)]
    assert pareto_mask(pts, HAND_SENSES).tolist() == [True, True, False, True, True]
    ranks = non_dominated_sort(pts, HAND_SENSES).tolist()
    assert ranks == [0, 0, 1, 0, 0]
    # removing one copy of a duplicate changes nothing
    assert hypervolume_contributions(pts, HAND_SENSES, HAND_REF).tolist() == [0, 0, 0, 0, 0]


def test_empty_inputs():
    for empty in ([], np.empty((0, 2))):
        assert pareto_mask(empty, HAND_SENSES).shape == (0,)
        assert pareto_mask(empty, HAND_SENSES).dtype == bool
        assert non_dominated_sort(empty, HAND_SENSES).shape == (0,)
        assert crowding_distance(empty, HAND_SENSES).shape == (0,)
        assert hypervolume(empty, HAND_SENSES, HAND_REF) == 0.0
        assert hypervolume_history(empty, HAND_SENSES, HAND_REF).shape == (0,)
        assert hypervolume_contributions(empty, HAND_SENSES, HAND_REF).shape == (0,)


def test_points_worse_than_reference_contribute_nothing():
    ref = (0.5, 30.0)
    pts = [(0.4, 10.0), (0.9, 40.0), (0.9, 30.0), (0.5, 5.0)]  # none strictly dominates ref
    assert hypervolume(pts, HAND_SENSES, ref) == 0.0
    assert hypervolume_history(pts, HAND_SENSES, ref).tolist() == [0.0] * 4
    assert hypervolume_contributions(pts, HAND_SENSES, ref).tolist() == [0.0] * 4
    good = [(0.7, 10.0)]
    base = hypervolume(good, HAND_SENSES, ref)
    assert base == pytest.approx(0.2 * 20)
    assert hypervolume(good + pts, HAND_SENSES, ref) == pytest.approx(base)
    contrib = hypervolume_contributions(good + pts, HAND_SENSES, ref)
    assert contrib == pytest.approx([base, 0, 0, 0, 0])


def test_single_point_and_one_objective():
    assert hypervolume([(0.5, 10)], HAND_SENSES, HAND_REF) == pytest.approx(0.5 * 20)
    assert crowding_distance([(0.5, 10)], HAND_SENSES).tolist() == [np.inf]
    pts = [[3.0], [1.0], [1.0], [2.0]]
    assert pareto_mask(pts, ["min"]).tolist() == [False, True, True, False]
    assert non_dominated_sort(pts, ["min"]).tolist() == [2, 0, 0, 1]
    assert hypervolume(pts, ["min"], [5.0]) == pytest.approx(4.0)
    assert hypervolume_contributions(pts, ["min"], [5.0]).tolist() == [0, 0, 0, 0]
    assert hypervolume_contributions([[3.0], [1.0]], ["min"], [5.0]).tolist() == [0, 2]
    assert hypervolume_history(pts, ["max"], [0.0]).tolist() == [3.0] * 4


def test_validation_errors():
    with pytest.raises(ValueError, match="senses"):
        pareto_mask(HAND_PTS, ("max", "minimize"))
    with pytest.raises(ValueError, match="senses"):
        to_minimization(HAND_PTS, "maxmin")
    with pytest.raises(ValueError, match="columns"):
        pareto_mask(HAND_PTS, ("max", "min", "min"))
    with pytest.raises(ValueError):
        hypervolume(HAND_PTS, HAND_SENSES, (0.0,))
    with pytest.raises(ValueError):
        dominates((1, 2), (1, 2, 3), ("min", "min"))


@pytest.mark.parametrize(
    "fn",
    [
        lambda p: pareto_mask(p, HAND_SENSES),
        lambda p: non_dominated_sort(p, HAND_SENSES),
        lambda p: crowding_distance(p, HAND_SENSES),
        lambda p: to_minimization(p, HAND_SENSES),
        lambda p: hypervolume(p, HAND_SENSES, HAND_REF),
        lambda p: hypervolume_history(p, HAND_SENSES, HAND_REF),
        lambda p: hypervolume_contributions(p, HAND_SENSES, HAND_REF),
    ],
)
def test_nan_row_is_named(fn):
    pts = [(0.9, 10.0), (0.8, 5.0), (0.7, 20.0), (0.6, float("nan"))]
    with pytest.raises(ValueError, match="row 3"):
        fn(pts)


def test_contributions_simple_cases_sum():
    # 2-D staircase of mutually non-dominated points, all min, ref (4, 4):
    # the exclusive boxes are 1x1 each; the shared region is counted in none.
    pts = [(1, 3), (2, 2), (3, 1)]
    c = hypervolume_contributions(pts, ("min", "min"), (4, 4))
    assert c.tolist() == [1.0, 1.0, 1.0]
    assert hypervolume(pts, ("min", "min"), (4, 4)) == pytest.approx(6.0)
    # two points that do not overlap in their exclusive parts except the common box
    pts = [(0, 2), (2, 0)]
    c = hypervolume_contributions(pts, ("min", "min"), (3, 3))
    hv = hypervolume(pts, ("min", "min"), (3, 3))
    common = 1.0 * 1.0  # box [2,3]x[2,3] dominated by both
    assert c.sum() + common == pytest.approx(hv)
    # a single point owns all the volume
    assert hypervolume_contributions([(2, 2)], ("max", "max"), (0, 0)).tolist() == [4.0]
    # dominated point: zero contribution, but it reduces its dominator's contribution
    pts = [(1, 1), (2, 2)]
    c = hypervolume_contributions(pts, ("min", "min"), (3, 3))
    assert c.tolist() == [4.0 - 1.0, 0.0]


def test_crowding_distance_hand_case():
    pts = [(0.9, 10), (0.8, 5), (0.85, 7), (0.7, 2)]
    cd = crowding_distance(pts, HAND_SENSES)
    assert np.isinf(cd[[0, 3]]).all()
    # point 1 (0.8, 5): acc neighbours 0.7/0.85 -> 0.15/0.2, mflops neighbours 2/7 -> 5/8
    assert cd[1] == pytest.approx(0.15 / 0.2 + 5 / 8)
    assert cd[2] == pytest.approx(0.1 / 0.2 + 5 / 8)
    assert crowding_distance(pts[:2], HAND_SENSES).tolist() == [np.inf, np.inf]
    # constant objective: no division by zero, interior gets only the other objective
    cd = crowding_distance([(1, 0), (1, 1), (1, 3)], ("max", "min"))
    assert np.isinf(cd[0]) and np.isinf(cd[2]) and cd[1] == pytest.approx(1.0)


# ---------------------------------------------------------------------------
# property tests against brute force
# ---------------------------------------------------------------------------
@SETTINGS
@given(fronts(max_n=12))
def test_mask_and_ranks_match_bruteforce(data):
    pts, senses, _ = data
    assert pareto_mask(pts, senses).tolist() == bf_mask(pts, senses)
    ranks = non_dominated_sort(pts, senses)
    assert ranks.tolist() == bf_ranks(pts, senses)
    if len(pts):
        assert ((ranks == 0) == pareto_mask(pts, senses)).all()


@SETTINGS
@given(fronts(k=2, max_n=8))
def test_hv_2d_matches_bruteforce(data):
    pts, senses, ref = data
    hv = hypervolume(pts, senses, ref)
    assert hv == pytest.approx(bf_hv_staircase_2d(pts, senses, ref), abs=1e-9)
    assert hv == pytest.approx(bf_hv_incl_excl(pts, senses, ref), abs=1e-9)
    assert hv == pytest.approx(bf_hv_grid(pts, senses, ref), abs=1e-9)


@SETTINGS
@given(fronts(k=3, max_n=8))
def test_hv_3d_matches_bruteforce(data):
    pts, senses, ref = data
    hv = hypervolume(pts, senses, ref)
    assert hv == pytest.approx(bf_hv_incl_excl(pts, senses, ref), abs=1e-9)
    assert hv == pytest.approx(bf_hv_grid(pts, senses, ref), abs=1e-9)


@SETTINGS
@given(fronts(max_n=8))
def test_history_matches_prefix_bruteforce(data):
    pts, senses, ref = data
    hist = hypervolume_history(pts, senses, ref)
    assert hist.shape == (len(pts),)
    expected = [bf_hv_grid(pts[: i + 1], senses, ref) for i in range(len(pts))]
    assert hist == pytest.approx(expected, abs=1e-9)
    assert np.all(np.diff(hist) >= 0)
    if len(pts):
        assert hist[-1] == pytest.approx(hypervolume(pts, senses, ref))


@SETTINGS
@given(fronts(max_n=7))
def test_contributions_match_bruteforce(data):
    pts, senses, ref = data
    contrib = hypervolume_contributions(pts, senses, ref)
    total = bf_hv_grid(pts, senses, ref)
    expected = [total - bf_hv_grid(np.delete(pts, i, axis=0), senses, ref) for i in range(len(pts))]
    assert contrib == pytest.approx(expected, abs=1e-9)
    assert np.all(contrib >= 0)
    # dominated rows never contribute
    if len(pts):
        assert np.all(contrib[~pareto_mask(pts, senses)] == 0)


@SETTINGS
@given(fronts(max_n=10, min_n=1))
def test_crowding_boundaries_are_inf(data):
    pts, senses, _ = data
    cd = crowding_distance(pts, senses)
    assert cd.shape == (len(pts),)
    assert np.all(cd >= 0)
    for j in range(pts.shape[1]):
        col = pts[:, j]
        assert np.isinf(cd[col == col.min()]).any()
        assert np.isinf(cd[col == col.max()]).any()
    if len(pts) <= 2:
        assert np.isinf(cd).all()


def _bf_crowding(pts: np.ndarray) -> np.ndarray:
    n, k = pts.shape
    cd = np.zeros(n)
    for j in range(k):
        order = sorted(range(n), key=lambda i: pts[i, j])
        lo, hi = pts[order[0], j], pts[order[-1], j]
        cd[order[0]] = cd[order[-1]] = np.inf
        for pos in range(1, n - 1):
            i = order[pos]
            if hi > lo:
                cd[i] += (pts[order[pos + 1], j] - pts[order[pos - 1], j]) / (hi - lo)
    return cd


@pytest.mark.parametrize("seed", range(20))
def test_seeded_random_fronts(seed):
    rng = np.random.default_rng(seed)
    k = 2 + seed % 2
    senses = tuple(rng.choice(["max", "min"], size=k))
    n = int(rng.integers(1, 9))
    pts = random_front(rng, n, k)
    ref = tuple(0.1 if s == "max" else 0.9 for s in senses)  # some points fall outside
    assert pareto_mask(pts, senses).tolist() == bf_mask(pts, senses)
    assert non_dominated_sort(pts, senses).tolist() == bf_ranks(pts, senses)
    hv = hypervolume(pts, senses, ref)
    assert hv == pytest.approx(bf_hv_incl_excl(pts, senses, ref), rel=1e-12, abs=1e-12)
    assert hv == pytest.approx(bf_hv_grid(pts, senses, ref), rel=1e-12, abs=1e-12)
    if k == 2:
        assert hv == pytest.approx(bf_hv_staircase_2d(pts, senses, ref), rel=1e-12, abs=1e-12)
    hist = hypervolume_history(pts, senses, ref)
    assert np.all(np.diff(hist) >= 0) and hist[-1] == pytest.approx(hv)
    # continuous values (ties only where injected): compare crowding with a loop reference
    distinct = rng.random((max(n, 3), k))
    assert crowding_distance(distinct, senses) == pytest.approx(_bf_crowding(distinct))


# ---------------------------------------------------------------------------
# scale
# ---------------------------------------------------------------------------
def test_pareto_mask_scales_to_10k():
    rng = np.random.default_rng(0)
    pts = rng.random((10_000, 2))
    pts[:, 1] = 1.0 - pts[:, 0] + 0.05 * rng.random(10_000)  # fairly large front
    t0 = time.perf_counter()
    mask = pareto_mask(pts, HAND_SENSES)
    ranks = non_dominated_sort(pts, HAND_SENSES)
    assert time.perf_counter() - t0 < SCALE_SECONDS
    # spot-check against a vectorised brute force on a subset of rows
    pm = _to_min(pts, HAND_SENSES)
    idx = rng.choice(len(pts), 200, replace=False)
    for i in idx:
        dominated = np.any(np.all(pm <= pm[i], axis=1) & np.any(pm < pm[i], axis=1))
        assert mask[i] == (not dominated)
    assert ((ranks == 0) == mask).all()


@pytest.mark.parametrize("k", [2, 3])
def test_history_2000_points_is_fast(k):
    rng = np.random.default_rng(k)
    senses = ("max",) + ("min",) * (k - 1)
    pts = rng.random((2000, k))
    ref = (0.0,) + (1.0,) * (k - 1)
    t0 = time.perf_counter()
    hist = hypervolume_history(pts, senses, ref)
    assert time.perf_counter() - t0 < SCALE_SECONDS
    assert np.all(np.diff(hist) >= 0)
    assert hist[-1] == pytest.approx(hypervolume(pts, senses, ref))
    # spot-check a few prefixes against the one-shot hypervolume
    for i in (0, 10, 500, 1999):
        assert hist[i] == pytest.approx(hypervolume(pts[: i + 1], senses, ref))
    c = hypervolume_contributions(pts[:300], senses, ref)
    assert np.all(c >= 0)
