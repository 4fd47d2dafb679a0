"""search/compat.py: the private Optuna and Ray API the tool relies on still exists, on the
versions this module knows (an upgrade fails here first, by design)."""

from __future__ import annotations

import inspect
from pathlib import Path

import optuna
import pytest
import ray
from _tree import ROOT, project_files
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search import compat


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def test_pinned_versions_are_the_installed_ones() -> None:
    assert _minor(optuna.__version__) in compat.KNOWN_VERSIONS["optuna"], (
        f"Optuna {optuna.__version__} is not one search/compat.py was checked against: re-read its "
        "functions against this release, then add the version to KNOWN_VERSIONS"
    )
    assert _minor(ray.__version__) in compat.KNOWN_VERSIONS["ray"], (
        f"Ray {ray.__version__} is not one search/compat.py was checked against"
    )


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning", "ignore:Heartbeat of storage")
def test_optuna_private_api_on_a_real_sqlite_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'compat.db'}"
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=60)
    study = optuna.create_study(study_name="compat", storage=storage)
    running = study.ask()
    assert isinstance(compat.study_storage(study), optuna.storages.BaseStorage)
    assert compat.study_storage(study).get_study_id_from_name("compat") == study._study_id
    assert compat.heartbeat_interval(study) == 60
    compat.record_heartbeat(compat.study_storage(study), compat.trial_id(running))
    # another handle on the same study, as a different process would have, fails the trial
    other = optuna.load_study(study_name="compat", storage=url)
    compat.fail_trial(other, other.trials[0], "stopped by the test")
    frozen = study.trials[0]
    assert frozen.state == TrialState.FAIL
    assert frozen.user_attrs["fail_reason"] == "stopped by the test"
    assert compat.heartbeat_interval(optuna.create_study()) is None  # in-memory: no heartbeat


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning", "ignore:Heartbeat of storage")
def test_running_trials_without_a_heartbeat_are_found_and_failed_with_their_retry(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'compat.db'}"
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
    storage = optuna.storages.RDBStorage(
        url, heartbeat_interval=5, grace_period=7, heartbeat_stale_trial_callback=retry
    )
    study = optuna.create_study(study_name="compat", storage=storage)
    beating, silent = study.ask(), study.ask()
    study.tell(study.ask(), 1.0)  # finished: not running
    compat.record_heartbeat(compat.study_storage(study), compat.trial_id(beating))
    assert compat.running_without_heartbeat(study) == [compat.trial_id(silent)]
    assert compat.grace_period(study) == 7
    compat.fail_as_stale(study, compat.trial_id(silent))
    compat.fail_as_stale(study, compat.trial_id(silent))  # already failed: nothing more
    assert [t.state for t in study.get_trials()] == [
        TrialState.RUNNING,
        TrialState.FAIL,
        TrialState.COMPLETE,
        TrialState.WAITING,
    ]
    assert compat.running_without_heartbeat(study) == []
    assert compat.running_without_heartbeat(optuna.create_study()) == []  # in-memory: none


def test_ray_optuna_search_keeps_the_attributes_compat_reads() -> None:
    searcher = OptunaSearch(metric="accuracy", mode="max", space={"x": optuna.distributions.IntDistribution(0, 3)})
    searcher.suggest("ray-trial-1")
    assert isinstance(compat.ray_searcher_study(searcher), optuna.Study)
    assert set(compat.ray_searcher_trials(searcher)) == {"ray-trial-1"}
    searcher.on_trial_complete("ray-trial-1", {"accuracy": 0.5})
    assert "ray-trial-1" in compat.ray_searcher_completed(searcher)


def test_ray_auto_address_is_the_one_ray_would_join(monkeypatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")  # first in Ray's order: no other cluster is looked for
    assert compat.ray_auto_address() == "10.1.2.3:6379"


def test_no_private_optuna_or_ray_attribute_outside_compat() -> None:
    """Private attributes of Optuna or Ray objects are read only through search/compat.py."""
    private = ("._storage", "._trial_id", "._ot_study", "._ot_trials", "._completed_trials", "ray._private")
    offenders = []
    for path in project_files("*.py"):  # the project's files, never a virtual environment inside the checkout
        if path.relative_to(ROOT).parts[0] == "tests" or path.name == "compat.py":
            continue
        text = path.read_text(encoding="utf-8")
        offenders += [f"{path.relative_to(ROOT)}: {name}" for name in private if name in text]
    assert not offenders, offenders
    assert inspect.getsourcefile(compat).endswith("search/compat.py")


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_light_trial_rows_hold_what_optunas_trials_hold(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'rows.db'}"
    study = optuna.create_study(study_name="rows", storage=url, directions=["maximize", "minimize"])
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.COMPLETE, values=[0.5, float("inf")], user_attrs={"a": [1, {"b": None}]}
        )
    )
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, system_attrs={"failed_trial": 0, "other": 1}))
    running = study.ask()
    running.set_user_attr("rung_1", [0.1, 2.0])
    storage = compat.rdb_storage(compat.study_storage(study))
    assert storage is not None and compat.rdb_storage(optuna.storages.InMemoryStorage()) is None
    rows = compat.read_trial_rows(storage, compat.study_id(study))
    for row, trial in zip(rows, study.get_trials(deepcopy=False), strict=True):
        assert (row.trial_id, row.number, row.state) == (compat.trial_id(trial), trial.number, trial.state)
        assert (row.values, row.datetime_start, row.datetime_complete) == (
            trial.values,
            trial.datetime_start,
            trial.datetime_complete,
        )
        assert row.user_attrs == trial.user_attrs
        assert row.system_attrs == {k: v for k, v in trial.system_attrs.items() if k == "failed_trial"}
    # only what is newer than a trial id, or named
    later = compat.read_trial_rows(storage, compat.study_id(study), rows[1].trial_id, [rows[0].trial_id])
    assert [r.number for r in later] == [0, 2]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_user_attributes_set_in_one_transaction(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'attrs.db'}"
    study = optuna.create_study(study_name="attrs", storage=url)
    trial = study.ask()
    trial.set_user_attr("kept", 1)
    compat.set_user_attrs(study, trial, {"kept": 2, "new": {"x": [1.5]}})
    assert trial.user_attrs == {"kept": 2, "new": {"x": [1.5]}}
    assert optuna.load_study(study_name="attrs", storage=url).trials[0].user_attrs == {"kept": 2, "new": {"x": [1.5]}}
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        compat.set_user_attrs(study, trial, {"late": 1})
    memory = optuna.create_study()
    other = memory.ask()
    compat.set_user_attrs(memory, other, {"a": 1})
    assert memory.trials[0].user_attrs == {"a": 1}
