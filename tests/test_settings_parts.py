"""The settings package: the parts of ``Settings`` by concern, and a record that stays the same."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from search.settings import (
    EarlyStopping,
    LocalWorkers,
    OneShotSettings,
    RaySettings,
    Scoring,
    Settings,
    SettingsError,
    StorageTarget,
    TrainingSettings,
    check_device_available,
    default_storage_url,
)
from search.strategies.early_stopping import early_stop_line, stopping_rule

RECORD_FIELDS = (
    "space budget width training tune objectives sampler seed backend results_dir storage study_name max_mflops "
    "baselines confirm race max_failures checkpoint_every latency latency_batch strategy retrain_top supernet_epochs early_stop "
    "min_epochs eta workers trials_per_gpu worker_index ray_address ray_storage cpus_per_trial gpus_per_trial "
    "max_concurrent ray_retries preset quiet"
).split()


def test_the_record_is_unchanged_by_its_parts() -> None:
    """run.json stores ``to_json()``: the parts are views, never fields."""
    settings = Settings()
    assert [f.name for f in dataclasses.fields(Settings)] == RECORD_FIELDS
    assert list(settings.to_json()) == RECORD_FIELDS


def test_each_part_holds_its_options(tmp_path: Path) -> None:
    settings = Settings(
        training=TrainingSettings(dataset="digits", epochs=9),
        results_dir=str(tmp_path),
        objectives=("accuracy", "latency"),
        latency="table",
        latency_batch=8,
        max_mflops=5.0,
        retrain_top=2,
        early_stop="mo-asha",
        min_epochs=1,
        eta=3,
        workers=2,
        trials_per_gpu=3,
        ray_address="auto",
        ray_storage="/shared/ray",
        cpus_per_trial=2.0,
        gpus_per_trial=0.5,
        max_concurrent=4,
        ray_retries=1,
    )
    target = settings.storage_target
    assert target == StorageTarget(default_storage_url(str(tmp_path)), False, "vgg_hetconv-digits", str(tmp_path))
    assert target.url == settings.storage_url == f"sqlite:///{tmp_path.resolve() / 'studies.db'}"
    assert target.study_dir == settings.study_dir
    assert settings.scoring == Scoring(("accuracy", "latency_ms"), "table", 8, 5.0)
    assert settings.early_stopping == EarlyStopping("mo-asha", 1, 3, 9, ("accuracy", "latency_ms"), "digits")
    assert settings.one_shot == OneShotSettings(2, 36)  # supernet epochs: 4 x --epochs by default
    assert settings.replace(supernet_epochs=5).one_shot.supernet_epochs == 5
    assert settings.local_workers == LocalWorkers(2, 3, None)
    assert settings.ray == RaySettings("auto", "/shared/ray", 2.0, 0.5, 4, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.ray.retries = 3  # type: ignore[misc]


def test_an_explicit_storage_is_the_target() -> None:
    target = Settings(storage="sqlite:///elsewhere/s.db", study_name="mine").storage_target
    assert (target.url, target.explicit, target.study_name) == ("sqlite:///elsewhere/s.db", True, "mine")
    assert StorageTarget.of("results", None, "x").url == default_storage_url("results")


def test_the_stopping_rule_is_built_from_the_early_stopping_part() -> None:
    part = Settings(training=TrainingSettings(dataset="digits", epochs=10), early_stop="mo-asha").early_stopping
    assert part.enabled and stopping_rule(part).rungs == (1, 3, 9)
    assert early_stop_line(part) == (
        "early stopping mo-asha at epochs 1, 3, 9 of 10, the best 1/3 go on "
        "(--early-stop none: train every trial to the end)"
    )
    off = Settings(early_stop="none").early_stopping
    assert (
        not off.enabled
        and stopping_rule(off) is None
        and early_stop_line(off)
        == ("early stopping off (--early-stop mo-asha: stop trials that cannot reach the front)")
    )


def test_a_device_this_machine_lacks_is_an_options_error() -> None:
    check_device_available("cpu")
    with pytest.raises(SettingsError, match="cuda:99"):
        check_device_available("cuda:99")
