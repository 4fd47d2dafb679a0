"""The SQL statements a search sends per trial, counted with a SQLAlchemy listener: in this
process (:func:`statements_per_trial`), or as one "machine" of several on one storage::

    python tests/statement_counter.py OUT.json -- search --storage URL --budget N ...

Training is replaced by a result drawn at once (what is counted is the driver's own work), and
the count is cut at every trial the process tells: the statements of trial k are those sent
between the tells of trials k-1 and k (the first, which reads the whole study once, has no
count). Only the main thread's statements count: the heartbeat thread's beats depend on
time, not on the study. Used by tests/test_trial_index.py (SQLite) and tests/test_postgres.py
(several machines on one PostgreSQL study).
"""

from __future__ import annotations

import json
import random
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def grow_study(study, size: int, seed: int = 0) -> None:
    """Add complete trials of distinct random vgg_hetconv (width 0.25) candidates to ``study``
    until it has ``size``."""
    import optuna
    from optuna.trial import TrialState

    from spaces import get_space

    space = get_space("vgg_hetconv", width=0.25)
    distributions = {
        slot.name: optuna.distributions.CategoricalDistribution([s.label for s in options])
        for slot, options in zip(space.slots, space.choices)
    }
    rng = random.Random(seed + size)
    trials = []
    for number in range(len(study.get_trials(deepcopy=False)), size):
        arch = space.from_params({slot.name: rng.choice(o).label for slot, o in zip(space.slots, space.choices)})
        trials.append(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE,
                values=[rng.random(), 1 + 10 * rng.random()],
                params=space.to_params(arch),
                distributions=distributions,
                user_attrs={"architecture": arch.to_json(), "status": "ok", "seed": number, "curve": [{"epoch": 1}]},
            )
        )
    study.add_trials(trials)


def statements_per_trial(argv: list[str]) -> list[int]:
    """Run ``run_search.py argv`` in this process; the statements of each trial it told but
    the first."""
    import sqlalchemy

    import run_search
    import search.backends.optuna_driver as driver
    from search.evaluation.candidate import Outcome

    def evaluate(arch, hyperparameters, plan, seed, number, on_epoch=None, checkpoint=None):
        rng = random.Random(number)
        attrs = {"architecture": arch.to_json(), "seed": seed, "status": "ok", "mflops": 5.0, "curve": [{"epoch": 1}]}
        values = {"accuracy": rng.random(), "mflops": 1 + 10 * rng.random(), "params": 1000.0}
        return Outcome("complete", values, attrs, None, f"trial {number}: acc {values['accuracy']:.4f}")

    sent = [0]
    marks: list[int] = []
    real_tell = driver.tell_outcome

    def tell(*args, **kwargs):
        real_tell(*args, **kwargs)
        marks.append(sent[0])

    main_thread = threading.main_thread()

    def count(conn, cursor, statement, parameters, context, executemany):
        # The heartbeat thread beats every HEARTBEAT_SECONDS: a count of time, not of the
        # study's size, and a slow machine adds beats (a flaky 113 vs 112 in CI).
        if threading.current_thread() is main_thread:
            sent[0] += 1

    real_evaluate = driver.evaluate_candidate
    driver.evaluate_candidate, driver.tell_outcome = evaluate, tell
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", count)
    try:
        code = run_search.main(argv)
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", count)
        driver.evaluate_candidate, driver.tell_outcome = real_evaluate, real_tell
    if code:
        raise RuntimeError(f"run_search.py {' '.join(argv)} exited with {code}")
    return [b - a for a, b in zip(marks, marks[1:])]


if __name__ == "__main__":
    out, separator, *cli = sys.argv[1:]
    assert separator == "--", "usage: statement_counter.py OUT.json -- ARGS"
    Path(out).write_text(json.dumps(statements_per_trial(cli)))
