"""The per-process index of a study's trials (search/storage.py, TrialIndex) and what stands on
it: records equal to those built from Optuna's own trials after every kind of change (new,
running, finished, failed, queued, written by another process), the incremental folds (budget
count, configurations), and a search whose queries per trial do not grow with the study
(counted with a SQLAlchemy listener; tests/test_postgres.py does the same on PostgreSQL)."""

from __future__ import annotations

import gc
import json
import math
import random
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from statement_counter import grow_study, statements_per_trial

from search.backends.study import count_finished, retry_origin, spends_budget
from search.backends.trial import rung_peers
from search.compat import rdb_storage, study_storage
from search.evaluation.evaluate import frozen_between_trials, release_memory
from search.reporting.configurations import group_configurations
from search.reporting.front import front_summary, study_configurations
from search.storage import load_records, open_storage, study_objectives, to_record, trial_index
from spaces import get_space

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
optuna.logging.set_verbosity(optuna.logging.ERROR)

SPACE = get_space("vgg_hetconv", width=0.25)


def _frozen_records(study: optuna.Study):
    """The records as they were built before the index: from a fresh handle's FrozenTrials."""
    fresh = optuna.load_study(study_name=study.study_name, storage=rdb_storage(study_storage(study)).url)
    return [to_record(t, study_objectives(fresh)) for t in fresh.get_trials(deepcopy=False)]


def _arch(rng: random.Random):
    return SPACE.from_params({slot.name: rng.choice(o).label for slot, o in zip(SPACE.slots, SPACE.choices)})


def _new_study(tmp_path: Path, name: str = "index") -> optuna.Study:
    storage = open_storage(f"sqlite:///{tmp_path / 'studies.db'}", heartbeat=True)
    study = optuna.create_study(storage=storage, study_name=name, directions=["maximize", "minimize"])
    study.set_user_attr("objectives", ["accuracy", "mflops"])
    return study


def _add(study: optuna.Study, rng: random.Random, state=TrialState.COMPLETE, **attrs) -> None:
    arch = _arch(rng)
    values = [rng.random(), 1 + 10 * rng.random()] if state == TrialState.COMPLETE else None
    user_attrs = {"architecture": arch.to_json(), "status": "ok", "mflops": 1.0, "curve": [{"epoch": 1}], **attrs}
    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            values=values,
            params=SPACE.to_params(arch),
            distributions={
                slot.name: optuna.distributions.CategoricalDistribution([s.label for s in o])
                for slot, o in zip(SPACE.slots, SPACE.choices)
            },
            user_attrs=user_attrs,
        )
    )


def test_records_match_optunas_after_every_kind_of_change(tmp_path):
    rng = random.Random(0)
    study = _new_study(tmp_path)
    for _ in range(5):
        _add(study, rng)
    _add(study, rng, TrialState.FAIL, status="failed", fail_reason="boom")
    _add(study, rng, TrialState.PRUNED, status="early_stopped", rung_1=[0.5, 3.0])
    assert load_records(study) == _frozen_records(study)
    # another process (another storage object) asks, runs and queues trials
    other = optuna.load_study(study_name="index", storage=f"sqlite:///{tmp_path / 'studies.db'}")
    running = other.ask()
    running.set_user_attr("rung_1", [0.7, 2.0])
    other.enqueue_trial(SPACE.to_params(_arch(rng)), user_attrs={"baseline": "4"})
    study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, values=[math.inf, -math.inf]))
    assert load_records(study) == _frozen_records(study)
    index = trial_index(study)
    assert [r.status for r in index.open()] == ["running", "queued"]
    assert [p.key for p in rung_peers(study, 1)] == [6, running.number]
    # the running trial finishes, the queued one starts and fails
    running.set_user_attr("status", "ok")
    other.tell(running, [0.9, 2.0])
    queued = other.ask()
    other.tell(queued, state=TrialState.FAIL)
    assert load_records(study) == _frozen_records(study)
    assert trial_index(study).open() == []
    assert [p.key for p in rung_peers(study, 1)] == [6, running.number]
    assert count_finished(study) == sum(spends_budget(r) for r in _frozen_records(study))


def test_study_objects_on_one_storage_share_an_index_and_folds_are_incremental(tmp_path):
    rng = random.Random(1)
    study = _new_study(tmp_path)
    for _ in range(4):
        _add(study, rng)
    again = optuna.load_study(study_name="index", storage=study_storage(study))
    assert trial_index(again) is trial_index(study)
    assert study_configurations(study) == group_configurations(_frozen_records(study), ["accuracy", "mflops"])
    first = study.get_trials()[0]
    _add(study, rng, repeat_of=0, architecture=first.user_attrs["architecture"])  # a second run of #0
    _add(study, rng)
    configs = study_configurations(again)
    assert configs == group_configurations(_frozen_records(study), ["accuracy", "mflops"])
    assert [c.runs_count for c in configs] == [2, 1, 1, 1, 1]
    summary = front_summary(study)
    assert summary.noise.configurations == 1 and summary.size == len(summary.front_runs)


def test_retry_origin_follows_both_kinds_of_retry(tmp_path):
    rng = random.Random(2)
    study = _new_study(tmp_path)
    _add(study, rng, TrialState.FAIL, status="failed")
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, system_attrs={"failed_trial": 0}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, user_attrs={"retry_of": 1}))
    assert [retry_origin(study, n) for n in range(3)] == [0, 0, 0]


QUICK = ["--preset", "quick", "--epochs", "1", "--threads", "1", "--no-baselines", "--confirm", "0"]


def continued_statements(results: Path, size: int, more: int, storage: str | None = None) -> list[int]:
    """Statements per trial of a search continued by ``more`` trials on a study grown to
    ``size`` trials (tests/statement_counter.py: training replaced, the driver's work counted)."""
    args = [*QUICK, "--no-report", "--quiet", "--results-dir", str(results)]
    args += ["--storage", storage] if storage else []
    statements_per_trial(["search", *args, "--budget", "1"])  # creates the study
    url = storage or f"sqlite:///{results / 'studies.db'}"
    grow_study(optuna.load_study(study_name="vgg_hetconv-digits", storage=url), size)
    return statements_per_trial(["search", *args, "--budget", str(size + more)])


def test_queries_per_trial_do_not_grow_with_the_study(tmp_path):
    small = continued_statements(tmp_path / "small", 30, 4)
    large = continued_statements(tmp_path / "large", 600, 4)
    assert len(small) == len(large) == 3
    assert max(large) <= max(small), f"statements per trial: {small} at 30 trials, {large} at 600"


def test_the_heap_is_frozen_only_while_a_search_loop_runs():
    assert gc.get_freeze_count() == 0
    with frozen_between_trials():
        with frozen_between_trials():  # the one-shot search runs the Optuna driver inside its own
            release_memory()
            assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    release_memory()
    assert gc.get_freeze_count() == 0


def test_the_light_reader_decodes_every_value_as_optuna_does(tmp_path):
    study = _new_study(tmp_path)
    odd = {"text": 'quote " and, comma', "nested": {"list": [1, 2.5, None, True]}, "nan": math.nan, "inf": -math.inf}
    study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, values=[0.5, 2.0], user_attrs=odd))
    (record,) = load_records(study)
    (expected,) = _frozen_records(study)
    assert json.dumps(record.user_attrs, sort_keys=True) == json.dumps(expected.user_attrs, sort_keys=True)
    assert math.isnan(record.user_attrs["nan"]) and record.user_attrs["inf"] == -math.inf
