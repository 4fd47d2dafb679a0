"""search.backends.study.open_search when several processes open a new study at once: one
creates it and writes its attributes, "created" last; the others wait for that instead of
reading a half-written study (seen as a KeyError on 'reference_point' with three machines
started together on a new PostgreSQL database)."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
import pytest

import search.backends.study as study_module
from search.backends.study import open_search
from search.settings import Settings, TrainingSettings
from search.storage import StorageError

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def _settings(results_dir: Path) -> Settings:
    training = TrainingSettings(dataset="digits", epochs=1, batch_size=64, threads=1, device="cpu")
    return Settings(space="vgg_hetconv", width=0.25, training=training, results_dir=str(results_dir))


def _half_initialised(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> optuna.Study:
    """A study whose creator wrote everything but the last attribute (it is still writing)."""
    with monkeypatch.context() as patch:
        patch.setattr(study_module, "INITIALISED", "not_the_marker")
        study = open_search(settings).study
    assert "space" in study.user_attrs and "created" not in study.user_attrs
    return study


def test_a_second_process_waits_for_the_creator_to_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path)
    study = _half_initialised(settings, monkeypatch)
    finish = threading.Timer(0.5, lambda: study.set_user_attr("created", "now"))
    finish.start()
    try:
        context = open_search(settings)
    finally:
        finish.join()
    assert context.study.user_attrs["created"] == "now"
    assert context.reference == study.user_attrs["reference_point"]


def test_a_creator_that_never_finishes_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path)
    _half_initialised(settings, monkeypatch)
    monkeypatch.setattr(study_module, "INITIALISE_WAIT_SECONDS", 0.3)
    with pytest.raises(StorageError, match="did not finish setting it up"):
        open_search(settings)
