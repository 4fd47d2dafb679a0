"""WindowedTPESampler: Optuna's TPE exactly up to its window, a bounded view beyond it that
always holds the study's best trials."""

from __future__ import annotations

import optuna
import pytest
from optuna.samplers._tpe.sampler import _split_trials
from optuna.trial import TrialState

from search.backends.sampler import TPE_WINDOW, make_sampler
from search.backends.windowed_tpe import WindowedTPESampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", -2, 2)
    c = trial.suggest_categorical("c", [1, 2, 4, 8])
    return (x - 1) ** 2 + c, x**2 / c


def test_same_as_tpe_up_to_the_window() -> None:
    def run(sampler: optuna.samplers.BaseSampler) -> list[dict]:
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
        study.optimize(objective, n_trials=40)
        return [t.params for t in study.trials]

    kwargs = dict(seed=3, multivariate=True, n_startup_trials=10)
    assert run(WindowedTPESampler(window=40, **kwargs)) == run(optuna.samplers.TPESampler(**kwargs))
    # Beyond the window the samples differ: the view is not the whole study.
    assert run(WindowedTPESampler(window=20, **kwargs)) != run(optuna.samplers.TPESampler(**kwargs))


def test_beyond_the_window_the_view_holds_the_best_and_the_most_recent() -> None:
    window = 30
    sampler = WindowedTPESampler(window=window, seed=0, multivariate=True, n_startup_trials=10)
    seen: list[list[int]] = []
    original = sampler._build_parzen_estimator

    def recording(study, search_space, trials, handle_below):  # type: ignore[no-untyped-def]
        seen.append([t.number for t in trials])
        return original(study, search_space, trials, handle_below)

    sampler._build_parzen_estimator = recording  # type: ignore[method-assign]
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    study.optimize(objective, n_trials=120)

    # The last sample: below + above together are the window, no more.
    below, above = seen[-2], seen[-1]
    assert len(below) + len(above) == window
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE][:-1]
    # Its good side is the study's best (TPE's own split over every trial before the last) ...
    best, _ = _split_trials(study, finished, len(below))
    assert sorted(below) == sorted(t.number for t in best)
    # ... and its other side the most recent of the rest.
    rest = [t.number for t in finished if t.number not in set(below)]
    assert above == rest[-len(above) :]
    # Every sample modelled at most `window` trials.
    assert all(len(b) + len(a) <= window for b, a in zip(seen[::2], seen[1::2]))


def test_pruned_and_running_trials() -> None:
    """Pruned trials count as finished; a trial still running is not folded into the best."""
    sampler = WindowedTPESampler(window=12, seed=1, multivariate=True, n_startup_trials=5)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    for i in range(30):
        trial = study.ask()
        x = trial.suggest_float("x", -2, 2)
        trial.suggest_categorical("c", [1, 2, 4, 8])
        if i % 5 == 4:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, [x**2, (x - 1) ** 2])
    running = study.ask()
    running.suggest_float("x", -2, 2)
    assert running.number not in sampler._folded
    assert len(sampler._folded) == 30


def test_the_tool_uses_it() -> None:
    sampler = make_sampler("tpe", 0)
    assert isinstance(sampler, WindowedTPESampler)
    assert sampler._window == TPE_WINDOW >= 1000  # the sizes tested so far sample exactly as TPE


def test_bad_window() -> None:
    with pytest.raises(ValueError, match="window"):
        WindowedTPESampler(window=1)
