"""TPE whose cost per trial stops growing with the study.

Optuna's :class:`~optuna.samplers.TPESampler` (Bergstra et al., "Algorithms for Hyper-Parameter
Optimization", NeurIPS 2011; Ozaki et al., "Multiobjective Tree-Structured Parzen Estimator",
JAIR 2022) reads every finished trial at every sample: it ranks them all to split the best
from the rest and builds a Parzen estimator over each side. At thousands of trials that is the
largest cost the driver adds per trial, and it grows linearly (on the project's 2-core machine:
5 ms at 500 trials, 52 ms at 5000, 127 ms at 10000).

:class:`WindowedTPESampler` is that sampler on a bounded view of the study. Up to ``window``
trials the view is the whole study and nothing differs. Beyond it, the view holds ``window``
trials: the study's best ``gamma(window)`` (TPE's own split: nondomination rank, then
hypervolume subset selection, then pruned trials by their last report), kept incrementally as
trials finish, and the most recent other trials. The "good" density is then still made of the
best trials the study ever found; only the "bad" density forgets the oldest of the rest, which
TPE already weights least.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers._tpe.sampler import (
    _get_infeasible_trial_score,
    _split_infeasible_trials,
    _split_pruned_trials,
    _split_trials,
    default_gamma,
    default_gamma_multiobjective,
)
from optuna.study import StudyDirection
from optuna.study._multi_objective import _fast_non_domination_rank
from optuna.trial import FrozenTrial, TrialState

__all__ = ["WindowedTPESampler"]


class WindowedTPESampler(optuna.samplers.TPESampler):
    """:class:`optuna.samplers.TPESampler` that models at most ``window`` trials per sample.

    Every other argument is ``TPESampler``'s.

    Example:

        .. code-block:: python

            import optuna
            from search.backends.windowed_tpe import WindowedTPESampler


            def objective(trial):
                x = trial.suggest_float("x", -1, 1)
                return x**2, (x - 1) ** 2


            sampler = WindowedTPESampler(window=30, seed=0, multivariate=True)
            study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
            study.optimize(objective, n_trials=50)
    """

    def __init__(self, *, window: int = 1000, **kwargs: Any) -> None:
        if window < 2:
            raise ValueError(f"window must be at least 2, got {window}")
        super().__init__(**kwargs)
        self._window = window
        # Every finished trial that can still be among the study's best, kept as trials finish:
        # the complete ones of the nondomination ranks up to the best's last rank (a trial
        # pushed below that by newer ones can never return), the best pruned and infeasible.
        self._complete: list[FrozenTrial] = []
        self._pruned: list[FrozenTrial] = []
        self._infeasible: list[FrozenTrial] = []
        self._folded: set[int] = set()  # numbers of the finished trials folded in
        self._below: list[FrozenTrial] = []  # the study's best, as of the last fold
        self._oldest_open = 0  # with constant_liar: the oldest trial running at the last look

    def _sample(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        states = (TrialState.COMPLETE, TrialState.PRUNED)
        if self._constant_liar:
            states += (TrialState.RUNNING,)
        trials = study._get_trials(deepcopy=False, states=states, use_cache=not self._constant_liar)
        if len(trials) <= self._window:
            return super()._sample(study, trial, search_space)

        gamma = self._gamma or (default_gamma if len(study.directions) <= 1 else default_gamma_multiobjective)
        n_below = min(gamma(self._window), self._window - 1)
        self._fold(study, self._unfolded(trials), n_below)
        below = self._below
        not_above = {t.number for t in below} | {trial.number}
        above = _last(trials, self._window - len(below), lambda t: t.number not in not_above)

        # TPESampler._sample from here on, on these two sides.
        mpe_below = self._build_parzen_estimator(study, search_space, below, handle_below=True)
        mpe_above = self._build_parzen_estimator(study, search_space, above, handle_below=False)
        samples_below = mpe_below.sample(self._rng.rng, self._n_ei_candidates)
        acq_func_vals = self._compute_acquisition_func(samples_below, mpe_below, mpe_above)
        ret = optuna.samplers.TPESampler._compare(samples_below, acq_func_vals)
        for param_name, dist in search_space.items():
            ret[param_name] = dist.to_external_repr(ret[param_name])
        return ret

    def _unfolded(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        """The finished trials not folded in yet, found without reading the whole study."""
        if not self._constant_liar:
            # ``trials`` are all finished, and stay so: their count says how many are new,
            # and they are found from the newest back.
            return _last(trials, len(trials) - len(self._folded), lambda t: t.number not in self._folded)
        # ``trials`` hold the running ones too: every trial below the oldest that was running
        # at the last look is folded in already.
        tail = trials[bisect.bisect_left(trials, self._oldest_open, key=lambda t: t.number) :]
        running = [t.number for t in tail if t.state == TrialState.RUNNING]
        if tail:
            self._oldest_open = min(running, default=tail[-1].number + 1)
        return [t for t in tail if t.state.is_finished() and t.number not in self._folded]

    def _fold(self, study: optuna.Study, new: list[FrozenTrial], n_below: int) -> None:
        if not new:
            return
        self._folded.update(t.number for t in new)
        feasible: list[FrozenTrial] = []
        infeasible: list[FrozenTrial] = []
        for t in new:
            (infeasible if _get_infeasible_trial_score(t) > 0 else feasible).append(t)
        self._infeasible, _ = _split_infeasible_trials(self._infeasible + infeasible, n_below)
        pruned = [t for t in feasible if t.state == TrialState.PRUNED]
        if pruned or self._pruned:
            self._pruned, _ = _split_pruned_trials(self._pruned + pruned, study, n_below)
        complete = self._complete + [t for t in feasible if t.state == TrialState.COMPLETE]
        if len(complete) > n_below:
            signs = [-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in study.directions]
            ranks = _fast_non_domination_rank(np.array([t.values for t in complete]) * signs, n_below=n_below)
            last = np.sort(ranks)[n_below - 1]
            complete = [t for t, rank in zip(complete, ranks) if rank <= last]
        self._complete = sorted(complete, key=lambda t: t.number)
        # TPE's own split, on every trial that can be among the best: the same best as over all.
        self._below, _ = _split_trials(study, self._complete + self._pruned + self._infeasible, n_below)


def _last(trials: list[FrozenTrial], n: int, keep: Callable[[FrozenTrial], bool]) -> list[FrozenTrial]:
    """The last ``n`` of ``trials`` that ``keep`` keeps, in their order."""
    found: list[FrozenTrial] = []
    for t in reversed(trials):
        if len(found) >= n:
            break
        if keep(t):
            found.append(t)
    return found[::-1]
