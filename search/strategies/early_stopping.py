"""Multi-objective asynchronous successive halving (ASHA) for early stopping.

Rule
----
Rungs are at ``min_epochs * eta**k`` epochs (``k = 0, 1, ...``) strictly below
``max_epochs`` (the full budget is not a rung: a trial that got there simply
finishes).  When a trial reaches a rung it is compared, right away and without
waiting for anybody, with every result recorded at that rung so far (its own
included, ``n`` results in all).  It continues iff its position in
:meth:`MultiObjectiveASHA.ranking` is below :meth:`MultiObjectiveASHA.quota`
``= max(1, ceil(n / eta))``.

The ranking is the NSGA-II one instead of a single metric: first the Pareto
rank from :func:`search.reporting.pareto.non_dominated_sort` on the rung objectives (for
example ``(accuracy at the rung, MFLOPs)``), then, inside a front, the crowding
distance from :func:`search.reporting.pareto.crowding_distance` computed within that
front, largest first (``inf`` extremes first), and finally the trial key as a
deterministic tie-break (ints before strings, each in natural order).  So a cheap, low-accuracy
trial that lies on the front (and, being the cheapest, is an extreme with
infinite crowding) is kept, where a single-metric scheduler would stop it.

Results are put in key order before ranking, so the ranking does not depend on
the order of the ``results`` given.

NaN
---
A result with NaN in any objective (a diverged trial) is *worst*: all such
results are ranked after every result without NaN; among themselves NaN is
replaced by ``-inf`` for "max" objectives and ``+inf`` for "min" ones and they
are ranked with the same rule.  (Plain substitution alone would leave a
diverged trial that happens to be the cheapest on the front.)  A trial alone at
its rung (``n = 1``) always continues, NaN or not.

Optuna user attributes
----------------------
The Optuna backend records a trial's objective values at rung ``e`` in the
trial user attribute :func:`rung_attr` ``(e) == "rung_<e>"`` as a JSON list of
numbers in the objective order of ``senses``, e.g.
``trial.set_user_attr("rung_3", [0.41, 12.5])``; ``null`` (``None``) stands for
NaN.  :func:`peers_from_attrs` turns ``(key, user_attrs)`` pairs back into
:class:`RungResult` objects.

Example
-------
>>> asha = MultiObjectiveASHA(min_epochs=1, eta=3, max_epochs=27)
>>> asha.rungs
(1, 3, 9)
>>> peers = [RungResult(0, (0.60, 5.0)), RungResult(1, (0.55, 6.0)), RungResult(2, (0.50, 8.0)),
...          RungResult(3, (0.58, 7.0)), RungResult(4, (0.40, 9.0))]
>>> asha.quota(len(peers) + 1)
2
>>> asha.decide(1, 5, (0.30, 1.0), peers)   # least accurate but cheapest: on the front, kept
True
>>> asha.decide(1, 6, (0.50, 7.0), peers)   # dominated by trials 0 and 1, stopped
False
>>> asha.decide(2, 6, (0.50, 7.0), peers)   # epoch 2 is not a rung
True
>>> asha.ranking(peers + [RungResult(5, (0.30, 1.0))])
[0, 5, 1, 3, 2, 4]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from search.reporting.pareto import crowding_distance, non_dominated_sort
from search.settings import DATASET_CLASSES, OBJECTIVE_SENSES, EarlyStopping

__all__ = [
    "RUNG_PREFIX",
    "RungResult",
    "MultiObjectiveASHA",
    "early_stop_line",
    "rung_attr",
    "peers_from_attrs",
    "guessing",
    "stopping_rule",
]

Key = str | int

_JSON_KIND = "MultiObjectiveASHA"


@dataclass(frozen=True)
class RungResult:
    """Objective values of one trial at one rung.

    ``key`` is the trial identity (Optuna trial number or Ray trial id) and
    ``values`` the objective values at that rung in the order of the
    scheduler's ``senses``, e.g. ``(accuracy_at_rung, mflops)``.
    """

    key: Key
    values: tuple[float, ...]


# What the user attribute of every rung starts with (:func:`rung_attr`).
RUNG_PREFIX = "rung_"


def rung_attr(epoch: int) -> str:
    """Name of the Optuna user attribute holding a trial's values at rung ``epoch``.

    >>> rung_attr(3)
    'rung_3'
    """
    return f"{RUNG_PREFIX}{epoch}"


def _float_or_nan(x: Any) -> float:
    return math.nan if x is None else float(x)


def peers_from_attrs(attr_dicts: Iterable[tuple[Key, Mapping[str, Any]]], epoch: int) -> list[RungResult]:
    """Results recorded at rung ``epoch``, from ``(key, user_attrs)`` pairs.

    Trials without the attribute :func:`rung_attr` ``(epoch)`` are skipped.
    The attribute must be a list of numbers (``None`` = NaN); anything else
    raises ``ValueError``.

    >>> peers_from_attrs([(0, {"rung_1": [0.5, 3.0]}), (1, {"status": "ok"})], 1)
    [RungResult(key=0, values=(0.5, 3.0))]
    """
    name = rung_attr(epoch)
    out: list[RungResult] = []
    for key, attrs in attr_dicts:
        if name not in attrs:
            continue
        raw = attrs[name]
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
            raise ValueError(f"trial {key!r}: user attribute {name!r} must be a list of numbers, got {raw!r}")
        try:
            values = tuple(_float_or_nan(v) for v in raw)
        except (TypeError, ValueError):
            raise ValueError(f"trial {key!r}: user attribute {name!r} must be a list of numbers, got {raw!r}") from None
        out.append(RungResult(key, values))
    return out


def _key_order(key: Key) -> tuple[int, Any]:
    """Deterministic sort key for mixed int / str trial keys."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return (0, int(key))
    return (1, str(key))


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


CHANCE_MARGIN = 1.5  # an accuracy up to 1.5x chance is indistinguishable from guessing on small validation sets


def guessing(accuracy: float, chance_level: float) -> bool:
    """Whether ``accuracy`` is still at chance level (at most ``CHANCE_MARGIN`` times it).
    False for NaN."""
    return accuracy <= CHANCE_MARGIN * chance_level


class MultiObjectiveASHA:
    """Asynchronous successive halving ranked by non-dominated sorting.

    Parameters
    ----------
    min_epochs:
        First rung (>= 1).
    eta:
        Reduction factor (>= 2): rungs grow by ``eta`` and about ``1/eta`` of
        the trials at a rung go on.
    max_epochs:
        Full budget (> ``min_epochs``); rungs are strictly below it.
    senses:
        ``"max"``/``"min"`` per objective, default ``("max", "min")`` for
        (accuracy, MFLOPs); e.g. ``("max", "min", "min")`` to add params.
    chance_level:
        Accuracy of guessing (``1 / classes``). A trial whose accuracy at the
        first rung is at most ``CHANCE_MARGIN`` times this has learned nothing
        measurable yet, so that rung says nothing about it: it continues to
        the second rung, where it is judged like every other trial, instead of
        being ranked on noise (the first epochs of a short, high-learning-rate
        schedule are often at chance). ``None``: every trial is judged.
    accuracy_index:
        Position of accuracy among the objectives (for ``chance_level``).

    >>> asha = MultiObjectiveASHA(2, 2, 16)
    >>> asha.rungs, asha.is_rung(4), asha.is_rung(16), asha.quota(9)
    ((2, 4, 8), True, False, 5)
    >>> MultiObjectiveASHA.from_json(asha.to_json()) == asha
    True
    """

    def __init__(
        self,
        min_epochs: int,
        eta: int,
        max_epochs: int,
        senses: Sequence[str] = ("max", "min"),
        *,
        chance_level: float | None = None,
        accuracy_index: int = 0,
    ) -> None:
        self._min_epochs = _check_int("min_epochs", min_epochs, 1)
        self._eta = _check_int("eta", eta, 2)
        self._max_epochs = _check_int("max_epochs", max_epochs, 1)
        if self._max_epochs <= self._min_epochs:
            raise ValueError(
                f"max_epochs must be > min_epochs, got max_epochs={max_epochs} and min_epochs={min_epochs}"
            )
        if isinstance(senses, (str, bytes)):
            raise ValueError(f"senses must be a sequence such as ('max', 'min'), got the string {senses!r}")
        senses = tuple(senses)
        if not senses:
            raise ValueError("senses must contain at least one objective")
        for j, s in enumerate(senses):
            if s not in ("max", "min"):
                raise ValueError(f"senses[{j}] = {s!r} is invalid; expected 'max' or 'min'")
        self._senses: tuple[str, ...] = senses
        if chance_level is not None and not 0 < float(chance_level) < 1:
            raise ValueError(f"chance_level must be in (0, 1), got {chance_level!r}")
        self._chance_level = None if chance_level is None else float(chance_level)
        self._accuracy_index = _check_int("accuracy_index", accuracy_index, 0)
        if self._accuracy_index >= len(senses):
            raise ValueError(f"accuracy_index {accuracy_index} is out of range for {len(senses)} objectives")
        rungs = []
        r = self._min_epochs
        while r < self._max_epochs:
            rungs.append(r)
            r *= self._eta
        self._rungs = tuple(rungs)

    # ------------------------------------------------------------------ properties
    @property
    def min_epochs(self) -> int:
        return self._min_epochs

    @property
    def eta(self) -> int:
        return self._eta

    @property
    def max_epochs(self) -> int:
        return self._max_epochs

    @property
    def senses(self) -> tuple[str, ...]:
        return self._senses

    @property
    def rungs(self) -> tuple[int, ...]:
        """``min_epochs * eta**k`` for ``k >= 0`` while strictly below ``max_epochs``."""
        return self._rungs

    def is_rung(self, epoch: int) -> bool:
        """True if ``epoch`` (number of epochs completed) is a rung."""
        return epoch in self._rungs

    def quota(self, n: int) -> int:
        """How many of ``n`` results at a rung go on: ``max(1, ceil(n / eta))``."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        return max(1, -(-int(n) // self._eta))

    # ------------------------------------------------------------------ ranking
    def _values(self, key: Key, values: Sequence[float]) -> tuple[float, ...]:
        try:
            vals = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise ValueError(f"trial {key!r}: values must be numbers, got {values!r}") from None
        if len(vals) != len(self._senses):
            raise ValueError(
                f"trial {key!r}: got {len(vals)} values {list(vals)} but {len(self._senses)} senses {list(self._senses)}"
            )
        return vals

    def _rank_group(self, keys: list[Key], pts: np.ndarray) -> list[Key]:
        """NSGA-II order of one group (rows already in key order, no NaN)."""
        if not keys:
            return []
        fronts = non_dominated_sort(pts, self._senses)
        out: list[Key] = []
        for f in np.unique(fronts):
            idx = np.flatnonzero(fronts == f)
            sub = pts[idx]
            crowd = crowding_distance(sub, self._senses)
            # idx is in key order, so a stable sort leaves key order as the last tie-break
            order = sorted(range(idx.size), key=lambda i: -crowd[i])
            out.extend(keys[idx[i]] for i in order)
        return out

    def ranking(self, results: Sequence[RungResult]) -> list[Key]:
        """Keys of ``results`` best first.

        Order: Pareto rank, then crowding
        distance within the front descending, then key order; results with
        NaN come after all others.  Keys must be unique.
        """
        seen: set[Key] = set()
        rows: list[tuple[Key, tuple[float, ...]]] = []
        for r in results:
            if r.key in seen:
                raise ValueError(f"duplicate key {r.key!r} in results")
            seen.add(r.key)
            rows.append((r.key, self._values(r.key, r.values)))
        rows.sort(key=lambda kv: _key_order(kv[0]))
        k = len(self._senses)
        pts = np.asarray([v for _, v in rows], dtype=np.float64).reshape(len(rows), k)
        bad = np.isnan(pts).any(axis=1)
        keys = [kv[0] for kv in rows]
        good_idx = np.flatnonzero(~bad)
        bad_idx = np.flatnonzero(bad)
        worst = np.array([-np.inf if s == "max" else np.inf for s in self._senses])
        bad_pts = pts[bad_idx]
        bad_pts = np.where(np.isnan(bad_pts), worst, bad_pts)
        return self._rank_group([keys[i] for i in good_idx], pts[good_idx]) + self._rank_group(
            [keys[i] for i in bad_idx], bad_pts
        )

    def decide(self, epoch: int, key: Key, values: Sequence[float], peers: Sequence[RungResult]) -> bool:
        """True = continue training, False = stop, for trial ``key`` at ``epoch``.

        ``peers`` are the results recorded at this rung so far; entries with
        ``key`` itself are ignored (``values`` is used for it), and if a peer
        key occurs several times its last entry counts.  Non-rung epochs
        always give True.
        """
        if not self.is_rung(epoch):
            return True
        if self._chance_level is not None and epoch == self._rungs[0]:
            accuracy = float(values[self._accuracy_index])
            if guessing(accuracy, self._chance_level):  # a NaN is judged (worst)
                return True
        mine = RungResult(key, self._values(key, values))
        others: dict[Key, RungResult] = {}
        for p in peers:
            if p.key != key:
                others[p.key] = p
        results = [mine, *others.values()]
        position = self.ranking(results).index(key)
        return position < self.quota(len(results))

    # ------------------------------------------------------------------ misc
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MultiObjectiveASHA):
            return NotImplemented
        return self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        extra = (
            f", chance_level={self._chance_level!r}, accuracy_index={self._accuracy_index}"
            if self._chance_level is not None
            else ""
        )
        return (
            f"MultiObjectiveASHA(min_epochs={self._min_epochs}, eta={self._eta}, "
            f"max_epochs={self._max_epochs}, senses={self._senses!r}{extra})"
        )

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON description, inverse of :meth:`from_json`."""
        return {
            "kind": _JSON_KIND,
            "min_epochs": self._min_epochs,
            "eta": self._eta,
            "max_epochs": self._max_epochs,
            "senses": list(self._senses),
            "chance_level": self._chance_level,
            "accuracy_index": self._accuracy_index,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MultiObjectiveASHA:
        """Rebuild from :meth:`to_json` output (``ValueError`` when malformed)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        kind = data.get("kind", _JSON_KIND)
        if kind != _JSON_KIND:
            raise ValueError(f"expected kind {_JSON_KIND!r}, got {kind!r}")
        missing = [f for f in ("min_epochs", "eta", "max_epochs") if f not in data]
        if missing:
            raise ValueError(f"missing field(s) {missing} in early-stopping JSON")
        return cls(
            data["min_epochs"],
            data["eta"],
            data["max_epochs"],
            tuple(data.get("senses", ("max", "min"))),
            chance_level=data.get("chance_level"),
            accuracy_index=data.get("accuracy_index", 0),
        )


def stopping_rule(part: EarlyStopping) -> MultiObjectiveASHA | None:
    """The early-stopping rule of a run (``settings.early_stopping``), or None when it is off."""
    if not part.enabled:
        return None
    senses = [OBJECTIVE_SENSES[o] for o in part.objectives]
    return MultiObjectiveASHA(
        part.min_epochs,
        part.eta,
        part.max_epochs,
        senses,
        chance_level=1 / DATASET_CLASSES[part.dataset],
        accuracy_index=part.objectives.index("accuracy"),
    )


def early_stop_line(part: EarlyStopping) -> str:
    """What the start of a search says about early stopping (off by default)."""
    rule = stopping_rule(part)
    if rule is None:
        return "early stopping off (--early-stop mo-asha: stop trials that cannot reach the front)"
    return (
        f"early stopping mo-asha at epochs {', '.join(map(str, rule.rungs))} of {part.max_epochs}, the best "
        f"1/{part.eta} go on (--early-stop none: train every trial to the end)"
    )
