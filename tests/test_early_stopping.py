"""Tests for search.strategies.early_stopping (multi-objective asynchronous successive halving)."""

from __future__ import annotations

import doctest
import json
import math
import random

import numpy as np
import pytest

import search.strategies.early_stopping as es
from search.strategies.early_stopping import MultiObjectiveASHA, RungResult, peers_from_attrs, rung_attr, stopping_rule


# ---------------------------------------------------------------------------
# brute-force reference ranking: Pareto peeling + NSGA-II crowding + key order
# ---------------------------------------------------------------------------
def _bf_dominates(a, b) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def _bf_crowding(front):
    """NSGA-II crowding distance, written out directly (minimisation points, no ties)."""
    n = len(front)
    dist = [0.0] * n
    if n <= 2:
        return [math.inf] * n
    for j in range(len(front[0])):
        order = sorted(range(n), key=lambda i: front[i][j])
        lo, hi = front[order[0]][j], front[order[-1]][j]
        dist[order[0]] = dist[order[-1]] = math.inf
        for pos in range(1, n - 1):
            if hi > lo:
                dist[order[pos]] += (front[order[pos + 1]][j] - front[order[pos - 1]][j]) / (hi - lo)
    return dist


def _key_order(k):
    return (0, k) if isinstance(k, int) else (1, str(k))


def bf_ranking(results, senses):
    signs = [-1.0 if s == "max" else 1.0 for s in senses]
    remaining = {r.key: tuple(v * s for v, s in zip(r.values, signs)) for r in results}
    out = []
    while remaining:
        front = [
            k for k, p in remaining.items() if not any(_bf_dominates(q, p) for kk, q in remaining.items() if kk != k)
        ]
        crowd = dict(zip(front, _bf_crowding([remaining[k] for k in front])))
        out.extend(sorted(front, key=lambda k: (-crowd[k], _key_order(k))))
        for k in front:
            del remaining[k]
    return out


def _results(pairs):
    return [RungResult(k, tuple(v)) for k, v in pairs]


# ---------------------------------------------------------------------------
# rungs, quota
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "min_epochs, eta, max_epochs, expected",
    [(1, 3, 27, (1, 3, 9)), (2, 2, 16, (2, 4, 8)), (1, 2, 2, (1,)), (3, 3, 10, (3, 9)), (5, 4, 100, (5, 20, 80))],
)
def test_rungs(min_epochs, eta, max_epochs, expected):
    asha = MultiObjectiveASHA(min_epochs, eta, max_epochs)
    assert asha.rungs == expected
    assert not asha.is_rung(max_epochs)
    assert not asha.is_rung(0)
    assert all(asha.is_rung(r) for r in expected)
    assert [e for e in range(max_epochs + 5) if asha.is_rung(e)] == list(expected)


def test_quota():
    asha = MultiObjectiveASHA(1, 3, 27)
    assert [asha.quota(n) for n in range(0, 11)] == [1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4]
    assert MultiObjectiveASHA(1, 2, 8).quota(9) == 5


def test_non_rung_epochs_always_continue():
    asha = MultiObjectiveASHA(1, 3, 27)
    peers = _results([(0, (0.9, 1.0)), (1, (0.8, 1.0)), (2, (0.85, 1.0))])
    worst = (0.1, 100.0)
    assert asha.decide(1, 9, worst, peers) is False
    for epoch in (0, 2, 4, 27, 28):
        assert asha.decide(epoch, 9, worst, peers) is True


# ---------------------------------------------------------------------------
# hand-constructed cases
# ---------------------------------------------------------------------------
NINE = [  # key: (accuracy at rung 1, MFLOPs); front = {0, 1, 2}
    (0, (0.80, 10.0)),
    (1, (0.70, 5.0)),
    (2, (0.30, 1.0)),  # cheapest, least accurate, on the front
    (3, (0.60, 8.0)),  # dominated by 1
    (4, (0.75, 12.0)),  # dominated by 0
    (5, (0.50, 6.0)),  # dominated by 1
    (6, (0.65, 9.0)),  # dominated by 1
    (7, (0.40, 7.0)),  # dominated by 1
    (8, (0.78, 11.0)),  # dominated by 0
]


def test_cheap_low_accuracy_front_trial_continues():
    asha = MultiObjectiveASHA(1, 3, 27)
    results = _results(NINE)
    assert asha.quota(9) == 3
    decisions = {k: asha.decide(1, k, v, results) for k, v in NINE}
    assert decisions == {k: k in (0, 1, 2) for k, _ in NINE}
    # a single-metric (accuracy) scheduler would stop trial 2: it is the least accurate
    by_accuracy = sorted(NINE, key=lambda kv: -kv[1][0])
    assert [k for k, _ in by_accuracy].index(2) == 8
    assert asha.ranking(results)[:3] == [0, 2, 1]  # extremes (inf crowding) first, then the middle
    assert asha.ranking(results) == bf_ranking(results, ("max", "min"))


def test_dominated_trials_stop():
    asha = MultiObjectiveASHA(1, 3, 27)
    results = _results(NINE)
    for k, v in NINE[3:]:
        assert asha.decide(1, k, v, results) is False
        # also at later rungs, with the same peers
        assert asha.decide(3, k, v, results) is False and asha.decide(9, k, v, results) is False


def test_crowding_keeps_extremes_when_front_exceeds_quota():
    # 9 mutually non-dominated trials (accuracy rises with MFLOPs), quota 3
    mflops = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    acc = [0.10, 0.11, 0.12, 0.13, 0.50, 0.52, 0.54, 0.56, 0.90]
    keys = [8 - i for i in range(9)]  # key order opposite to MFLOPs order
    pairs = [(k, (a, m)) for k, a, m in zip(keys, acc, mflops)]
    asha = MultiObjectiveASHA(1, 3, 27)
    results = _results(pairs)
    kept = {k for k, v in pairs if asha.decide(1, k, v, results)}
    # both extremes (cheapest = key 8, most accurate = key 0) plus the widest gap (index 4 = key 4)
    assert kept == {8, 0, 4}
    assert asha.ranking(results)[:3] == [0, 8, 4]
    assert asha.ranking(results) == bf_ranking(results, ("max", "min"))


def test_arrival_order_matters_like_asha():
    asha = MultiObjectiveASHA(1, 2, 8)  # quota(n) = ceil(n / 2)
    strong = RungResult(0, (0.9, 5.0))
    weak_values = (0.5, 7.0)  # dominated by `strong`
    # arriving first: always continues
    assert asha.decide(1, 1, weak_values, []) is True
    # arriving second, after a trial that dominates it: n = 2, quota 1 -> stops
    assert asha.decide(1, 1, weak_values, [strong]) is False
    # arriving third, with one trial it dominates already recorded: n = 3, quota 2 -> continues
    worse = RungResult(2, (0.3, 9.0))
    assert asha.decide(1, 1, weak_values, [strong, worse]) is True


def test_asynchronous_replay():
    """Each trial is judged only against the trials that arrived before it."""
    asha = MultiObjectiveASHA(1, 3, 27)
    arrivals = [
        (10, (0.50, 5.0)),  # first: continues
        (11, (0.40, 6.0)),  # dominated by 10; n=2, quota 1: stops
        (12, (0.60, 4.0)),  # dominates 10; n=3, quota 1: continues
        (13, (0.20, 1.0)),  # cheapest, on the front; n=4, quota 2: position 1 -> continues
        (14, (0.55, 4.5)),  # dominated by 12; n=5, quota 2: stops
        (15, (0.45, 3.0)),  # on the front (12, 15, 13), interior; n=6, quota 2: stops
        (16, (0.70, 4.0)),  # dominates 12; n=7, quota 3: continues
    ]
    recorded: list[RungResult] = []
    decisions = []
    for k, v in arrivals:
        decisions.append(asha.decide(1, k, v, recorded))
        recorded.append(RungResult(k, v))
    assert decisions == [True, False, True, True, False, False, True]


def test_peers_containing_the_trial_itself():
    asha = MultiObjectiveASHA(1, 3, 27)
    peers = _results([(0, (0.9, 5.0)), (1, (0.1, 50.0)), (1, (0.2, 60.0)), (2, (0.5, 6.0))])
    # key 1 is the trial itself: its stale peer entries are ignored, `values` is used
    assert asha.decide(1, 1, (0.95, 1.0), peers) is True
    assert asha.decide(1, 1, (0.10, 50.0), peers) is False
    # a peer recorded twice counts once (the last entry): n = 3, quota 1
    dup = _results([(0, (0.1, 50.0)), (0, (0.9, 5.0))])
    assert asha.decide(1, 7, (0.5, 6.0), dup) is False
    assert asha.decide(1, 7, (0.5, 6.0), dup[::-1]) is True


def test_single_trial_continues():
    asha = MultiObjectiveASHA(1, 3, 27)
    assert asha.decide(1, 0, (0.0, 1e9), []) is True
    assert asha.decide(1, 0, (math.nan, math.nan), []) is True
    assert asha.ranking([]) == []


# ---------------------------------------------------------------------------
# brute-force comparison
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 3])
def test_ranking_matches_brute_force(k):
    rng = np.random.default_rng(1234 + k)
    for _ in range(300):
        n = int(rng.integers(1, 13))
        senses = tuple(str(s) for s in rng.choice(["max", "min"], size=k))
        if rng.random() < 0.5:
            keys = [int(x) for x in rng.choice(1000, size=n, replace=False)]
        else:
            keys = [f"trial_{x}" for x in rng.choice(1000, size=n, replace=False)]
        results = [RungResult(key, tuple(float(x) for x in rng.random(k))) for key in keys]
        asha = MultiObjectiveASHA(1, int(rng.integers(2, 5)), 64, senses)
        expected = bf_ranking(results, senses)
        assert asha.ranking(results) == expected
        # decide agrees with ranking + quota for every trial
        for r in results:
            assert asha.decide(1, r.key, r.values, results) == (expected.index(r.key) < asha.quota(n))


def test_ranking_is_order_independent_with_ties():
    rng = random.Random(7)
    asha = MultiObjectiveASHA(1, 3, 27, ("max", "min", "min"))
    for _ in range(100):
        n = rng.randint(1, 12)
        results = [RungResult(i, (rng.randint(0, 3) / 4, rng.randint(1, 4), rng.randint(1, 3))) for i in range(n)]
        ref = asha.ranking(results)
        assert sorted(ref) == list(range(n))
        for _ in range(3):
            shuffled = results[:]
            rng.shuffle(shuffled)
            assert asha.ranking(shuffled) == ref
        # ranking respects the Pareto fronts
        fronts = {}
        signs = (-1, 1, 1)
        remaining = {r.key: tuple(v * s for v, s in zip(r.values, signs)) for r in results}
        level = 0
        while remaining:
            front = [k for k, p in remaining.items() if not any(_bf_dominates(q, p) for q in remaining.values())]
            for key in front:
                fronts[key] = level
                del remaining[key]
            level += 1
        assert [fronts[key] for key in ref] == sorted(fronts[key] for key in ref)


def test_mixed_key_types_are_deterministic():
    asha = MultiObjectiveASHA(1, 3, 27)
    # identical points, two per set: both get infinite crowding, the key decides (ints first)
    assert asha.ranking([RungResult("b", (0.5, 5.0)), RungResult(3, (0.5, 5.0))]) == [3, "b"]
    assert asha.ranking([RungResult("b", (0.5, 5.0)), RungResult("a", (0.5, 5.0))]) == ["a", "b"]
    assert asha.ranking([RungResult(10, (0.5, 5.0)), RungResult(9, (0.5, 5.0))]) == [9, 10]


# ---------------------------------------------------------------------------
# NaN, three objectives
# ---------------------------------------------------------------------------
def test_nan_accuracy_is_worst():
    asha = MultiObjectiveASHA(1, 3, 27)
    results = _results([(0, (math.nan, 0.5)), (1, (0.5, 5.0)), (2, (0.4, 6.0)), (3, (0.1, 100.0))])
    # even the cheapest trial goes after every finite one when its accuracy is NaN
    assert asha.ranking(results) == [1, 2, 3, 0]
    # n = 2, quota 1: a NaN trial loses to any finite one
    assert asha.decide(1, 0, (math.nan, 0.5), results[3:]) is False
    assert asha.decide(1, 3, (0.1, 100.0), results[:1]) is True


def test_nan_rows_ranked_among_themselves():
    asha = MultiObjectiveASHA(1, 3, 27)
    results = _results([(0, (math.nan, 2.0)), (1, (math.nan, 1.0)), (2, (0.2, math.nan)), (3, (0.3, 3.0))])
    # NaN accuracy -> -inf, NaN MFLOPs -> +inf; (-inf, 1) dominates (-inf, 2); (0.2, inf) is non-dominated
    assert asha.ranking(results) == [3, 1, 2, 0]
    nan_key = RungResult(9, (math.nan, math.nan))
    assert asha.ranking([nan_key, *results])[-1] == 9


def test_three_objectives():
    senses = ("max", "min", "min")
    asha = MultiObjectiveASHA(1, 2, 8, senses)  # quota(n) = ceil(n / 2)
    pairs = [
        (0, (0.80, 10.0, 5.0)),
        (1, (0.70, 12.0, 1.0)),  # dominated in (acc, MFLOPs) but fewest params: on the 3-D front
        (2, (0.60, 15.0, 6.0)),  # dominated by 0
        (3, (0.75, 11.0, 5.5)),  # dominated by 0
    ]
    results = _results(pairs)
    assert set(asha.ranking(results)[:2]) == {0, 1}
    assert [asha.decide(1, k, v, results) for k, v in pairs] == [True, True, False, False]
    two_d = MultiObjectiveASHA(1, 2, 8)
    results_2d = _results([(k, v[:2]) for k, v in pairs])
    assert two_d.decide(1, 1, pairs[1][1][:2], results_2d) is False
    assert asha.ranking(results) == bf_ranking(results, senses)


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((0, 3, 27), {}, "min_epochs"),
        ((1, 1, 27), {}, "eta"),
        ((1, 3, 1), {}, "max_epochs"),
        ((4, 3, 2), {}, "max_epochs"),
        ((1.5, 3, 27), {}, "min_epochs"),
        ((1, 2.0, 27), {}, "eta"),
        ((True, 3, 27), {}, "min_epochs"),
        ((1, 3, "27"), {}, "max_epochs"),
        ((1, 3, 27, "max"), {}, "senses"),
        ((1, 3, 27, ()), {}, "senses"),
        ((1, 3, 27, ("max", "maximize")), {}, "senses"),
    ],
)
def test_argument_validation(args, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        MultiObjectiveASHA(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_value_validation():
    asha = MultiObjectiveASHA(1, 3, 27)
    with pytest.raises(ValueError, match="2 senses"):
        asha.decide(1, 0, (0.5, 1.0, 2.0), [])
    with pytest.raises(ValueError, match="trial 'x'"):
        asha.decide(1, 0, (0.5, 1.0), [RungResult("x", (0.5,))])
    with pytest.raises(ValueError, match="numbers"):
        asha.decide(1, 0, ("high", 1.0), [])
    with pytest.raises(ValueError, match="duplicate key"):
        asha.ranking(_results([(0, (0.5, 1.0)), (0, (0.6, 1.0))]))
    with pytest.raises(ValueError, match="non-negative"):
        asha.quota(-1)


# ---------------------------------------------------------------------------
# JSON, Optuna attributes, doctests
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "asha",
    [
        MultiObjectiveASHA(1, 3, 27),
        MultiObjectiveASHA(2, 2, 16, ("max", "min", "min")),
        MultiObjectiveASHA(1, 4, 50, chance_level=0.1),
    ],
)
def test_json_round_trip(asha):
    data = json.loads(json.dumps(asha.to_json()))
    back = MultiObjectiveASHA.from_json(data)
    assert back == asha
    assert back.rungs == asha.rungs and back.senses == asha.senses
    results = _results(NINE) if len(asha.senses) == 2 else _results([(k, (*v, 1.0)) for k, v in NINE])
    assert back.ranking(results) == asha.ranking(results)


def test_from_json_rejects_malformed():
    with pytest.raises(ValueError, match="kind"):
        MultiObjectiveASHA.from_json({"kind": "Hyperband", "min_epochs": 1, "eta": 3, "max_epochs": 9})
    with pytest.raises(ValueError, match="missing"):
        MultiObjectiveASHA.from_json({"min_epochs": 1, "eta": 3})
    with pytest.raises(ValueError, match="eta"):
        MultiObjectiveASHA.from_json({"min_epochs": 1, "eta": 1, "max_epochs": 9})
    with pytest.raises(ValueError, match="JSON object"):
        MultiObjectiveASHA.from_json([1, 3, 9])


def test_rung_attr_and_peers_from_attrs():
    assert rung_attr(9) == "rung_9"
    attrs = [
        (0, {"rung_1": [0.8, 10.0], "rung_3": [0.85, 10.0], "status": "ok"}),
        (1, {"rung_1": [0.3, 1.0]}),
        (2, {"status": "running"}),
        (3, json.loads(json.dumps({"rung_1": [None, 4.0]}))),
    ]
    peers = peers_from_attrs(attrs, 1)
    assert [p.key for p in peers] == [0, 1, 3]
    assert peers[0] == RungResult(0, (0.8, 10.0))
    assert math.isnan(peers[2].values[0]) and peers[2].values[1] == 4.0
    assert peers_from_attrs(attrs, 3) == [RungResult(0, (0.85, 10.0))]
    assert peers_from_attrs(attrs, 9) == []
    asha = MultiObjectiveASHA(1, 2, 8)  # n = 3, quota 2
    assert asha.decide(1, 1, (0.3, 1.0), peers) is True
    assert asha.decide(1, 3, (math.nan, 4.0), peers) is False
    for bad in ("0.5,1.0", 0.5, [0.5, "x"], {"acc": 0.5}):
        with pytest.raises(ValueError, match="trial 5"):
            peers_from_attrs([(5, {"rung_1": bad})], 1)


def test_doctests():
    result = doctest.testmod(es, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize(
    ("mode", "epochs", "min_epochs", "stops"),
    [
        ("auto", 5, 1, True),  # on when a rung lies below the last epoch
        ("auto", 1, 1, False),  # nothing to stop at
        ("auto", 3, 3, False),
        ("mo-asha", 5, 1, True),
        ("none", 5, 1, False),  # the default
        (None, 5, 1, False),  # None: off
    ],
)
def test_early_stopping_is_off_by_default_and_auto_where_there_is_a_rung(mode, epochs, min_epochs, stops):
    from search.settings import Settings, TrainingSettings

    settings = Settings(
        training=TrainingSettings(dataset="digits", epochs=epochs), early_stop=mode, min_epochs=min_epochs
    )
    assert Settings().early_stop == "none"
    assert settings.stops_early is stops
    rule = stopping_rule(settings.early_stopping)
    assert (rule is not None) is stops
    if stops:
        assert list(rule.rungs) == [r for r in (1, 3, 9) if min_epochs <= r < epochs]


def test_a_trial_at_chance_level_is_not_judged_at_that_rung():
    # Epoch-1 accuracies of the quick preset on digits: most trials still guess (~0.09).
    asha = MultiObjectiveASHA(1, 3, 9, chance_level=0.1)
    peers = [RungResult(("t", i), (0.9 - 0.01 * i, 5.0 + i)) for i in range(5)]
    # At chance (<= 1.5 x 0.1) at the first rung: it says nothing about it, it goes on to rung 3...
    assert asha.decide(1, "guessing", (0.09, 20.0), peers)
    assert asha.decide(1, "guessing", (0.15, 20.0), peers)
    # ...where it is judged like any other trial (a trial that never learns is stopped there).
    assert not asha.decide(3, "guessing", (0.09, 20.0), peers)
    # Above chance and dominated by every peer: stopped at rung 1 as before.
    assert not asha.decide(1, "learning", (0.16, 20.0), peers)
    # A NaN accuracy is never "at chance": it is judged, and ranks worst.
    assert not asha.decide(1, "diverged", (float("nan"), 1.0), peers)
    # Without a chance level the old rule applies.
    assert not MultiObjectiveASHA(1, 3, 9).decide(1, "guessing", (0.09, 20.0), peers)
    # The accuracy is found where the objectives put it.
    flipped = MultiObjectiveASHA(1, 3, 9, ("min", "max"), chance_level=0.1, accuracy_index=1)
    assert flipped.decide(1, "guessing", (20.0, 0.09), [RungResult(p.key, p.values[::-1]) for p in peers])
    assert MultiObjectiveASHA.from_json(asha.to_json()) == asha


def test_the_search_rule_knows_the_chance_level_of_its_data_set():
    from search.settings import Settings, TrainingSettings

    for dataset, chance in (("digits", 0.1), ("cifar100", 0.01)):
        rule = stopping_rule(
            Settings(training=TrainingSettings(dataset=dataset, epochs=9), early_stop="mo-asha").early_stopping
        )
        assert rule.decide(1, "k", (chance, 1.0), [RungResult("p", (0.9, 0.5))])
        assert not rule.decide(1, "k", (2 * chance, 1.0), [RungResult("p", (0.9, 0.5))])
    with pytest.raises(ValueError, match="chance_level"):
        MultiObjectiveASHA(1, 3, 9, chance_level=1.5)
