"""Studies and storages this tool did not make, and studies whose latency settings differ.

- A study another program made (trials or attributes of its own, or other directions) is
  refused with one line before anything is written to it, by a search (``open_search``) and
  by ``report``/``export``; a study just created (by this process or a sibling worker still
  writing its settings: no trials, no attributes, the same directions) is still taken.
- ``report`` on an SQLite file that is not an Optuna storage (another program's database)
  is refused without creating Optuna's tables in it.
- With the latency objective, the latency method, batch size and device kind must match to
  continue a study; a study made before they were recorded takes this run's settings.

All in process: ``open_search`` opens studies without training.
"""

from __future__ import annotations

import contextlib
import io
import sqlite3
from pathlib import Path

import optuna
import pytest

import run_search
from search.backends.study import open_search
from search.settings import Settings, TrainingSettings
from search.storage import StorageError, StudyMismatch

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

LATENCY = ("accuracy", "mflops", "latency_ms")


@pytest.fixture(autouse=True)
def _quiet_optuna():
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(before)


def _settings(results_dir: Path, **changes) -> Settings:
    training = TrainingSettings(dataset="digits", epochs=1, batch_size=64, threads=1, device="cpu")
    return Settings(space="vgg_hetconv", width=0.25, training=training, results_dir=str(results_dir), **changes)


def _url(results_dir: Path) -> str:
    return f"sqlite:///{results_dir / 'studies.db'}"


def _foreign(results_dir: Path, name: str, trials: int = 3, directions: tuple[str, ...] = ("minimize",)):
    """Another program's study in this tool's storage."""
    results_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=_url(results_dir), directions=list(directions))
    study.optimize(lambda t: [t.suggest_float("x", 0, 1)] * len(directions), n_trials=trials)
    return study


def _state(results_dir: Path, name: str) -> tuple[dict, int]:
    study = optuna.load_study(study_name=name, storage=_url(results_dir))
    return dict(study.user_attrs), len(study.get_trials())


def _cli(args: list[str]) -> tuple[int, str]:
    """``python run_search.py ARGS`` in this process: exit code and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_search.main(list(args))
    return code, err.getvalue()


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# ------------------------------------------------------------------------------- foreign studies


def test_a_foreign_study_with_trials_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    _foreign(tmp_path, "foreign")
    before = _state(tmp_path, "foreign")
    with pytest.raises(StudyMismatch, match=r"'foreign' in .* was not made by this tool \(it has 3 trials and no"):
        open_search(_settings(tmp_path, study_name="foreign"))
    assert _state(tmp_path, "foreign") == before == ({}, 3)
    # A second try says the same at once (no wait for a set-up that never finishes).
    with pytest.raises(StudyMismatch, match="not made by this tool"):
        open_search(_settings(tmp_path, study_name="foreign"))


def test_a_foreign_study_with_the_default_name_and_the_same_directions_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _foreign(tmp_path, settings.study, trials=2, directions=("maximize", "minimize"))
    with pytest.raises(StudyMismatch, match="it has 2 trials and no search settings"):
        open_search(settings)
    assert _state(tmp_path, settings.study) == ({}, 2)


def test_an_empty_foreign_study_with_other_directions_or_attributes_is_refused(tmp_path: Path) -> None:
    _foreign(tmp_path, "single", trials=0)
    with pytest.raises(StudyMismatch, match=r"it has 0 trials, 1 objective and no search settings"):
        open_search(_settings(tmp_path, study_name="single"))
    other = _foreign(tmp_path, "tagged", trials=0, directions=("maximize", "minimize"))
    other.set_user_attr("owner", "someone else")
    with pytest.raises(StudyMismatch, match=r"attributes this tool does not write \(owner\)"):
        open_search(_settings(tmp_path, study_name="tagged"))
    assert _state(tmp_path, "single") == ({}, 0)
    assert _state(tmp_path, "tagged") == ({"owner": "someone else"}, 0)


def test_a_new_study_and_one_a_sibling_just_created_are_taken(tmp_path: Path) -> None:
    created = open_search(_settings(tmp_path)).study
    assert "created" in created.user_attrs and "latency" not in created.user_attrs
    again = open_search(_settings(tmp_path)).study  # an existing study of this tool
    assert again.user_attrs == created.user_attrs
    # A sibling worker created this one a moment ago and has not written its settings yet.
    optuna.create_study(study_name="sibling", storage=_url(tmp_path), directions=["maximize", "minimize"])
    taken = open_search(_settings(tmp_path, study_name="sibling")).study
    assert "created" in taken.user_attrs and taken.user_attrs["space"] == created.user_attrs["space"]


@pytest.mark.parametrize("command", ["report", "export"])
def test_report_and_export_of_a_foreign_study_are_one_line(tmp_path: Path, command: str) -> None:
    _foreign(tmp_path, "foreign")
    code, stderr = _cli([command, "--study", "foreign", "--results-dir", str(tmp_path)])
    line = _one_error_line(stderr)
    assert code == 2 and "not made by this tool" in line and "--study" in line, line
    assert _state(tmp_path, "foreign") == ({}, 3)
    assert not (tmp_path / "foreign").exists()


def test_report_of_a_study_still_being_set_up_is_one_line(tmp_path: Path) -> None:
    _foreign(tmp_path, "new", trials=0, directions=("maximize", "minimize"))
    code, stderr = _cli(["report", "--study", "new", "--results-dir", str(tmp_path)])
    assert code == 2 and "no search settings yet" in _one_error_line(stderr)


# ------------------------------------------------------------------------------- storages of other programs


def _tables(db: Path) -> list[str]:
    conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    finally:
        conn.close()


def _another_programs_database(db: Path) -> Path:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    return db


def test_report_on_another_programs_sqlite_file_creates_no_tables(tmp_path: Path) -> None:
    db = _another_programs_database(tmp_path / "app.db")
    for command in ("report", "export"):
        code, stderr = _cli([command, "--study", "x", "--storage", f"sqlite:///{db}", "--results-dir", str(tmp_path)])
        assert code == 2 and "is not an Optuna storage" in _one_error_line(stderr)
    assert _tables(db) == ["users"]


@pytest.mark.parametrize("content", [b"", b"plain text, not a database\n" * 10])
def test_report_on_an_empty_or_non_database_file_is_one_line(tmp_path: Path, content: bytes) -> None:
    db = tmp_path / "studies.db"
    db.write_bytes(content)
    code, stderr = _cli(["report", "--study", "x", "--results-dir", str(tmp_path)])
    assert code == 2 and "is not an Optuna storage" in _one_error_line(stderr)
    assert db.read_bytes() == content


def test_a_search_on_another_programs_sqlite_file_is_refused_untouched(tmp_path: Path) -> None:
    db = _another_programs_database(tmp_path / "app.db")
    args = [
        "--dataset",
        "digits",
        "--budget",
        "1",
        "--results-dir",
        str(tmp_path / "r"),
        "--storage",
        f"sqlite:///{db}",
    ]
    code, stderr = _cli(args)
    assert code == 2 and "is not an Optuna storage" in _one_error_line(stderr)
    assert _tables(db) == ["users"]
    empty = tmp_path / "new.db"
    empty.touch()  # an empty file is a new storage, as a missing one is
    open_search(_settings(tmp_path, storage=f"sqlite:///{empty}"))
    assert "studies" in _tables(empty)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_storage_is_refused(tmp_path: Path, url: str) -> None:
    """The study would be lost at exit (the run went on, then threw it away)."""
    code, stderr = _cli(["--dataset", "digits", "--budget", "1", "--results-dir", str(tmp_path), "--storage", url])
    assert code == 2 and "is in memory: the study would be lost" in _one_error_line(stderr)
    assert not list(tmp_path.iterdir())


def test_report_on_a_storage_of_this_tool_still_opens(tmp_path: Path) -> None:
    open_search(_settings(tmp_path))
    code, stderr = _cli(["report", "--study", "nope", "--results-dir", str(tmp_path)])
    assert code == 2 and "no study 'nope'" in _one_error_line(stderr)


def test_open_storage_read_mode_refuses_without_creating(tmp_path: Path) -> None:
    from search.storage import open_storage

    db = tmp_path / "app.db"
    sqlite3.connect(db).close()  # an empty SQLite file: no tables
    with pytest.raises(StorageError, match="not an Optuna storage"):
        open_storage(f"sqlite:///{db}", create=False)
    assert _tables(db) == []


# ------------------------------------------------------------------------------- latency settings


def _latency_settings(results_dir: Path, **changes) -> Settings:
    return _settings(results_dir, objectives=LATENCY, **changes)


def test_latency_settings_are_recorded_and_must_match(tmp_path: Path) -> None:
    study = open_search(_latency_settings(tmp_path)).study
    assert study.user_attrs["latency"] == {"method": "measured", "batch": 1, "device": "cpu"}
    assert "latency_ms" in study.user_attrs["reference_point"]
    with pytest.raises(StudyMismatch, match=r"different latency \(latency.batch: study has 1, this run 64\)"):
        open_search(_latency_settings(tmp_path, latency_batch=64))
    # Refused before a latency table is built (that takes minutes).
    with pytest.raises(StudyMismatch, match=r'latency.method: study has "measured", this run "table"'):
        open_search(_latency_settings(tmp_path, latency="table"))
    assert not (tmp_path / "latency_tables").exists()
    assert open_search(_latency_settings(tmp_path)).study.user_attrs == study.user_attrs


def test_latency_settings_do_not_matter_without_the_latency_objective(tmp_path: Path) -> None:
    study = open_search(_settings(tmp_path)).study
    open_search(_settings(tmp_path, latency="table", latency_batch=64))
    assert "latency" not in optuna.load_study(study_name=study.study_name, storage=_url(tmp_path)).user_attrs


def test_a_latency_study_made_before_the_settings_were_recorded_takes_this_runs(tmp_path: Path) -> None:
    name = open_search(_latency_settings(tmp_path)).study.study_name
    conn = sqlite3.connect(tmp_path / "studies.db")  # as the previous version left it
    conn.execute("DELETE FROM study_user_attributes WHERE key = 'latency'")
    conn.commit()
    conn.close()
    assert "latency" not in _state(tmp_path, name)[0]
    open_search(_latency_settings(tmp_path, latency_batch=8))
    assert _state(tmp_path, name)[0]["latency"] == {"method": "measured", "batch": 8, "device": "cpu"}
    with pytest.raises(StudyMismatch, match="latency.batch: study has 8, this run 1"):
        open_search(_latency_settings(tmp_path))


def test_a_latency_batch_too_large_for_memory_leaves_the_study_usable(tmp_path: Path, monkeypatch) -> None:
    """Timing the dense model at ``--latency-batch`` ran out of memory with a traceback, after
    the new study had recorded that batch: a rerun with a smaller one was then refused."""
    import dataclasses

    import search.backends.study as study_module
    from search.settings import SettingsError

    real_plan = study_module.evaluation_plan

    def plan_out_of_memory(*args, **kwargs):
        def latency(arch):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 bytes.")

        return dataclasses.replace(real_plan(*args, **kwargs), latency=latency)

    monkeypatch.setattr(study_module, "evaluation_plan", plan_out_of_memory)
    big = _latency_settings(tmp_path).replace(latency="measured", latency_batch=4096)
    with pytest.raises(SettingsError, match=r"^--latency-batch 4096: .*can't allocate.*use a smaller --latency-batch$"):
        open_search(big)
    monkeypatch.setattr(study_module, "evaluation_plan", real_plan)
    context = open_search(big.replace(latency_batch=2))  # the same study, a smaller batch: taken
    assert context.study.user_attrs["latency"]["batch"] == 2
    assert context.reference["latency_ms"] > 0
