"""Reliability of the Optuna backend: a killed search resumes, a checkpointed training resumes
to the same result, failing trials are recorded and do not end the search, and several
worker processes keep the budget exact.

Real CLI runs (subprocesses, ``--preset quick``, real SQLite storage) and in-process runs of
the shared evaluation path, all on the offline ``digits`` data set with one torch thread.

Time on 2 CPU cores: the CLI scenarios (kill/resume, --checkpoint-every, --max-failures,
--workers) run two at a time in background threads, started when the module starts, while
the in-process tests use the main thread. The kill/resume scenario waits for
the killed trial's heartbeat to go stale (grace 3 x HEARTBEAT_SECONDS = 30 s), but only
because its budget needs the killed trial's retry; that wait overlaps with the others.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import sqlite3
import subprocess
import time
import weakref
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from _studies import load, storage_url
from cli_process import HANG_SECONDS, CliRunner, background_fixtures
from optuna.trial import TrialState

import search.backends.optuna_driver
import search.evaluation.candidate
import search.evaluation.evaluate
import search.storage
from search.backends.budget import Heartbeat, fail_stale, take_slot
from search.backends.optuna_driver import run_optuna_search
from search.backends.study import count_finished, open_search, trial_seed
from search.backends.trial import evaluation_plan
from search.compat import take_waiting_trial
from search.errors import SearchAborted
from search.evaluation.candidate import evaluate_candidate
from search.evaluation.evaluate import evaluate
from search.settings import Settings, TrainingSettings, resolve_device
from search.storage import open_storage
from spaces import get_space

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]

ROOT = Path(__file__).resolve().parent.parent
STUDY = "vgg_hetconv-digits"
QUICK = ["--preset", "quick", "--threads", "1", "--no-report", "--confirm", "0"]
RUN_TIMEOUT = HANG_SECONDS  # per CLI run, only a hang (2 cores shared with other jobs)
KILL_BUDGET = 4

optuna.logging.set_verbosity(optuna.logging.ERROR)


# ------------------------------------------------------------------------------- helpers


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"command: {' '.join(map(str, proc.args[2:]))}\nexit code {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"


def _db_rows(db: Path) -> list[tuple[int, str, str | None, str | None]]:
    """(number, state, datetime_start, heartbeat) of every trial, read with plain sqlite3 (no
    Optuna storage object in the polling test process); [] before the tables exist."""
    if not db.exists():
        return []
    try:
        connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
        try:
            return connection.execute(
                "SELECT t.number, t.state, t.datetime_start, h.heartbeat FROM trials t "
                "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id ORDER BY t.number"
            ).fetchall()
        finally:
            connection.close()
    except sqlite3.OperationalError:  # tables not created yet
        return []


# ------------------------------------------------------------------------------- CLI jobs (background)


def _job_kill_and_resume(runner: CliRunner, work: Path) -> dict[str, Any]:
    """Start a search, SIGKILL its whole process group while a trial is running (after at least
    one finished), then run the same command again to the end."""
    d = work / "results"
    # Every trial trains to the end (no early stopping), so that the budget ends COMPLETE.
    args = [*QUICK, "--epochs", 2, "--early-stop", "none", "--budget", KILL_BUDGET, "--results-dir", d]
    db = d / "studies.db"
    proc = runner.start(args, work, "first")
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise AssertionError(
                f"the first run ended (exit {proc.returncode}) before it could be killed:\n{proc.log[1].read_text()[-3000:]}"
            )  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            runner.kill(proc)
            raise AssertionError(f"no running trial after a finished one within {RUN_TIMEOUT}s")
        rows = _db_rows(db)
        complete = [r for r in rows if r[1] == "COMPLETE"]
        running = [r for r in rows if r[1] == "RUNNING"]
        # Kill in the middle of a trial's training: it has a heartbeat and started a while ago
        # (a 2-epoch trial takes several seconds), so it is not about to finish.
        if complete and running and running[0][3] is not None:
            started = datetime.fromisoformat(running[0][2])
            if (datetime.now() - started).total_seconds() >= 1.0:
                break
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = time.monotonic()
    first_stderr = proc.log[1].read_text()  # type: ignore[attr-defined]
    before = {t.number: t for t in load(d).get_trials()}
    rows = {r[0]: r for r in _db_rows(db)}
    running = [t for t in before.values() if t.state == TrialState.RUNNING]
    assert len(running) == 1, (
        f"expected one RUNNING trial after the kill: {[(t.number, t.state.name) for t in before.values()]}"
    )
    assert rows[running[0].number][3] is not None, (
        "the killed trial has no heartbeat row: it can never be found stale (see test_trial_killed_before_its_first_heartbeat)"
    )
    resumed = runner.run(args, work, "resumed")
    return {
        "dir": d,
        "before": before,
        "killed": running[0].number,
        "first_stderr": first_stderr,
        "resumed": resumed,
        "resume_seconds": time.monotonic() - killed_at,
        "after": load(d).get_trials(),
    }


def _job_workers(runner: CliRunner, work: Path) -> dict[str, Any]:
    d = work / "results"
    proc = runner.run([*QUICK, "--epochs", 1, "--workers", 2, "--budget", 5, "--results-dir", d], work, "workers")
    return {"dir": d, "proc": proc}


def _job_checkpoint_cli(runner: CliRunner, work: Path) -> dict[str, Any]:
    d = work / "results"
    proc = runner.run(
        [*QUICK, "--epochs", 2, "--checkpoint-every", 1, "--budget", 1, "--results-dir", d], work, "checkpoint"
    )
    return {"dir": d, "proc": proc}


def _job_max_failures_cli(runner: CliRunner, work: Path) -> dict[str, Any]:
    d = work / "results"
    # lr 1e6: every trial's loss becomes NaN in its first epoch.
    proc = runner.run(
        [*QUICK, "--epochs", 1, "--lr", "1e6", "--max-failures", 2, "--budget", 3, "--results-dir", d], work, "failures"
    )
    return {"dir": d, "proc": proc}


JOBS = {  # in this order, two at a time
    "kill": _job_kill_and_resume,
    "checkpoint_cli": _job_checkpoint_cli,
    "max_failures_cli": _job_max_failures_cli,
    "workers": _job_workers,
}
BACKGROUND_TESTS = {
    "test_kill_9_and_resume",
    "test_checkpoint_every_through_the_cli",
    "test_max_failures_through_the_cli",
    "test_two_workers_on_sqlite",
}


# ------------------------------------------------------------------------------- fixtures


runner, background, _start_background_early = background_fixtures(JOBS, BACKGROUND_TESTS, RUN_TIMEOUT)


@pytest.fixture(scope="module")
def space():
    return get_space("vgg_hetconv", width=0.25)


def plan_of(settings: Settings, space):
    """The evaluation plan a search of ``settings`` gives the candidate path."""
    return evaluation_plan(settings, space, resolve_device(settings.training.device))


def quick_settings(tmp_path: Path, **changes: Any) -> Settings:
    training = TrainingSettings(dataset="digits", epochs=1, batch_size=64, lr=0.1, warmup_epochs=0.5, threads=1)
    changes = {"confirm": 0, **changes}  # the budget is what these tests count
    return Settings(
        space="vgg_hetconv", width=0.25, training=training, results_dir=str(tmp_path), quiet=True, **changes
    )


# ------------------------------------------------------------------------------- 2. checkpoints (in process)


class Interrupted(Exception):
    """Stands for a kill in the middle of training."""


def test_checkpoint_resume_gives_the_same_result(tmp_path):
    training = TrainingSettings(dataset="digits", epochs=2, batch_size=64, lr=0.1, warmup_epochs=0.5, threads=1)
    arch = get_space("vgg_hetconv", width=0.125).uniform("2")  # HetConv layers; narrow: 4 epochs in all
    weights: dict[str, dict[str, torch.Tensor]] = {}

    def keep(name: str) -> Callable[[torch.nn.Module], None]:
        return lambda model: weights.__setitem__(name, {k: v.clone() for k, v in model.state_dict().items()})

    reference = evaluate(arch, training, seed=7, model_hook=keep("reference"))

    path = tmp_path / "checkpoints" / "trial_0.pt"
    seen: list[int] = []

    def stop_after_epoch_1(record) -> bool:
        seen.append(record.epoch)
        if record.epoch == 1:
            assert path.exists(), "the checkpoint of epoch 1 is written before on_epoch is called"
            raise Interrupted
        return False

    with pytest.raises(Interrupted):
        evaluate(arch, training, seed=7, on_epoch=stop_after_epoch_1, checkpoint=path, checkpoint_every=1)
    assert seen == [1]
    assert path.exists(), "an interrupted training keeps its checkpoint"
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert saved["epoch"] == 1 and len(saved["history"]) == 1

    resumed_epochs: list[int] = []
    resumed = evaluate(
        arch,
        training,
        seed=7,
        on_epoch=lambda r: resumed_epochs.append(r.epoch),
        checkpoint=path,
        checkpoint_every=1,
        model_hook=keep("resumed"),
    )
    assert resumed_epochs == [2], "the second call resumes after the saved epoch"
    assert resumed.epochs_run == 2 and not resumed.stopped_early
    assert resumed.accuracy == reference.accuracy
    assert resumed.val_loss == reference.val_loss
    assert [r.val_loss for r in resumed.curve] == [r.val_loss for r in reference.curve]
    assert [r.val_accuracy for r in resumed.curve] == [r.val_accuracy for r in reference.curve]
    assert [r.train_loss for r in resumed.curve] == [r.train_loss for r in reference.curve]
    assert [r.lr for r in resumed.curve] == [r.lr for r in reference.curve]
    assert weights["resumed"].keys() == weights["reference"].keys()
    for name, tensor in weights["reference"].items():
        assert torch.equal(weights["resumed"][name], tensor), f"weights differ after resuming: {name}"
    assert not path.exists(), "the checkpoint is removed when training ends"
    assert not list(path.parent.iterdir()), f"left behind: {list(path.parent.iterdir())}"


# ------------------------------------------------------------------------------- 3. failure injection (in process)


@pytest.fixture
def release_spy(monkeypatch):
    """Counts calls of the release_memory the candidate path uses (search.evaluation.candidate imports
    it from search.evaluation.evaluate by name, so the name to patch is search.evaluation.candidate.release_memory)."""
    calls: list[tuple] = []
    real = search.evaluation.candidate.release_memory

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(search.evaluation.candidate, "release_memory", spy)
    return calls


def test_exception_in_training_is_a_failed_outcome(space, tmp_path, monkeypatch, release_spy):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(search.evaluation.evaluate, "train_model", boom)
    arch = space.uniform("4")
    outcome = evaluate_candidate(arch, {}, plan_of(quick_settings(tmp_path), space), seed=3, number=5)
    assert outcome.state == "failed"
    assert outcome.values is None
    assert outcome.attrs["status"] == "failed"
    assert outcome.attrs["fail_reason"] == "RuntimeError: boom"
    assert "Traceback" in outcome.attrs["traceback"] and "RuntimeError: boom" in outcome.attrs["traceback"]
    assert "boom" in outcome.attrs["traceback"].splitlines()[-1]
    assert outcome.attrs["architecture"] == arch.to_json() and outcome.attrs["seed"] == 3
    assert outcome.line == "trial 5: failed (RuntimeError: boom)"
    assert len(release_spy) == 1


def test_nan_loss_is_a_failed_outcome(space, tmp_path, release_spy):
    settings = quick_settings(tmp_path).replace(training=quick_settings(tmp_path).training.replace(lr=1e6))
    outcome = evaluate_candidate(space.uniform("2"), {}, plan_of(settings, space), seed=0, number=1)
    assert outcome.state == "failed" and outcome.values is None
    reason = outcome.attrs["fail_reason"]
    assert "loss" in reason and re.search(r"\b(nan|inf)\b", reason), reason
    assert re.search(r"\bepoch 1\b", reason), reason  # stopped at once, not after the whole training
    assert "trial 1: failed (loss" in outcome.line
    assert len(release_spy) == 1


OOM_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB"


def _oom_run(space, tmp_path, monkeypatch, release_spy) -> tuple[Any, list[weakref.ref], list[bool]]:
    """A candidate whose training raises CUDA OOM; keeps a weak reference to its model and
    whether that model was already gone when release_memory ran."""
    models: list[weakref.ref] = []
    dead_at_release: list[bool] = []
    real_build = search.evaluation.evaluate.build_model

    def build(arch):
        model = real_build(arch)
        models.append(weakref.ref(model))
        return model

    def oom(model, *args, **kwargs):
        raise torch.OutOfMemoryError(OOM_MESSAGE)

    real_spy = search.evaluation.candidate.release_memory

    def spy(*args, **kwargs):
        dead_at_release.append(all(ref() is None for ref in models))
        return real_spy(*args, **kwargs)

    monkeypatch.setattr(search.evaluation.evaluate, "build_model", build)
    monkeypatch.setattr(search.evaluation.evaluate, "train_model", oom)
    monkeypatch.setattr(search.evaluation.candidate, "release_memory", spy)
    outcome = evaluate_candidate(space.uniform("2"), {}, plan_of(quick_settings(tmp_path), space), seed=0, number=2)
    return outcome, models, dead_at_release


def test_cuda_out_of_memory_is_a_failed_outcome_and_frees_the_model(space, tmp_path, monkeypatch, release_spy):
    outcome, models, dead_at_release = _oom_run(space, tmp_path, monkeypatch, release_spy)
    assert outcome.state == "failed" and outcome.values is None
    assert outcome.attrs["fail_reason"].startswith("out of device memory"), outcome.attrs
    assert "--batch-size" in outcome.attrs["fail_reason"]
    assert outcome.attrs["traceback"] == OOM_MESSAGE
    assert "trial 2: failed (out of device memory" in outcome.line
    assert len(release_spy) == 1 and len(dead_at_release) == 1, "release_memory is called once for the failed trial"
    assert len(models) == 1, "the candidate's model was built"
    gc.collect()
    assert models[0]() is None, "the failed trial's model is still alive after the call"


def test_cuda_out_of_memory_frees_the_model_before_releasing_memory(space, tmp_path, monkeypatch, release_spy):
    _, models, dead_at_release = _oom_run(space, tmp_path, monkeypatch, release_spy)
    assert len(models) == 1
    assert dead_at_release == [True], "the model was still alive when release_memory() ran"


def _flaky_training(monkeypatch, fail_calls: Callable[[int], bool]) -> list[int]:
    """Patch training so that call number i (0-based) raises RuntimeError('boom') when
    ``fail_calls(i)``; the others train for real."""
    calls: list[int] = []
    real = search.evaluation.evaluate.train_model

    def train(*args, **kwargs):
        calls.append(len(calls))
        if fail_calls(len(calls) - 1):
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(search.evaluation.evaluate, "train_model", train)
    return calls


def test_a_failing_trial_does_not_end_the_search(tmp_path, monkeypatch):
    calls = _flaky_training(monkeypatch, lambda i: i == 0)
    study = run_optuna_search(quick_settings(tmp_path, budget=3))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3, [t.state for t in trials]
    failed = trials[0]
    assert failed.user_attrs["status"] == "failed"
    assert failed.user_attrs["fail_reason"] == "RuntimeError: boom"
    assert "RuntimeError: boom" in failed.user_attrs["traceback"]
    assert "architecture" in failed.user_attrs and failed.user_attrs["seed"] == 0
    assert all(t.user_attrs["status"] == "ok" for t in trials[1:])
    assert [t.user_attrs["seed"] for t in trials] == [0, 1, 2, 3]
    # A failed trial is not retried (only interrupted and stale ones are).
    assert not any("retry_of" in t.user_attrs or "failed_trial" in t.system_attrs for t in trials)
    assert len(calls) == 4


def test_max_failures_aborts_and_keeps_the_study(tmp_path, monkeypatch):
    calls = _flaky_training(monkeypatch, lambda i: True)
    settings = quick_settings(tmp_path, budget=3, max_failures=2)
    with pytest.raises(SearchAborted) as info:
        run_optuna_search(settings)
    message = str(info.value)
    assert message.startswith("2 trials in a row failed (last: RuntimeError: boom)"), message
    assert len(calls) == 2
    trials = optuna.load_study(study_name=settings.study, storage=settings.storage_url).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    assert all(t.user_attrs["fail_reason"] == "RuntimeError: boom" for t in trials)


# ------------------------------------------------------------------------------- heartbeat gap (in process)


def test_trial_killed_before_its_first_heartbeat_is_failed_eventually(tmp_path, monkeypatch):
    monkeypatch.setattr(search.storage, "HEARTBEAT_SECONDS", 1)  # grace 3 s
    url = storage_url(tmp_path)
    study = optuna.create_study(storage=open_storage(url, heartbeat=True), study_name="gap")
    orphan = take_slot(study, url, 1)
    assert orphan is not None
    orphan.suggest_categorical("x", ["a", "b"])
    # ... the process is killed here, before `with Heartbeat(study, trial)`.
    time.sleep(3 * 1 + 2.5)
    slot = take_slot(study, url, 1)
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states[orphan.number] == "FAIL", f"the orphaned trial is never failed: {states}"
    assert slot is not None, "a resumed run with budget 1 gets no slot, forever"


def test_trial_killed_between_its_start_and_its_first_heartbeat_is_failed_and_retried(tmp_path, monkeypatch):
    """Killed inside take_slot, after `ask` and before the first beat: the trial has no
    heartbeat row, and Optuna's stale check (an old heartbeat) never fails it. It held the
    budget's last slot forever (seen in CI: both workers of a resumed search waited on it)."""
    monkeypatch.setattr(search.storage, "HEARTBEAT_SECONDS", 1)  # grace 3 s
    url = storage_url(tmp_path)
    study = optuna.create_study(storage=open_storage(url, heartbeat=True), study_name="gap")
    orphan = study.ask()  # ... and the process is killed here
    orphan.suggest_categorical("x", ["a", "b"])
    assert take_slot(study, url, 1) is None, "the orphan is failed before it was seen without a beat for the grace"
    time.sleep(3 + 0.5)
    slot = take_slot(study, url, 1)
    trials = study.get_trials()
    assert trials[orphan.number].state == TrialState.FAIL, (
        f"the orphan is never failed: {[t.state.name for t in trials]}"
    )
    assert slot is not None, "a resumed run with budget 1 gets no slot, forever"
    assert slot.params == orphan.params, "the slot is not the orphan's retry"


def test_repeat_killed_before_its_first_heartbeat_is_queued_again(tmp_path, monkeypatch):
    """Killed inside take_repeat, after the queued repeat was started and before its first
    beat: failed once seen without a beat for the grace, and its retry keeps `repeat_of`, so
    confirmation runs it (it is not a new budget trial)."""
    monkeypatch.setattr(search.storage, "HEARTBEAT_SECONDS", 1)
    url = storage_url(tmp_path)
    study = optuna.create_study(storage=open_storage(url, heartbeat=True), study_name="gap")
    study.enqueue_trial({}, user_attrs={search.storage.REPEAT_OF: 0})
    orphan = take_waiting_trial(study, study.get_trials()[0])  # ... and the process is killed here
    assert orphan is not None
    fail_stale(study)
    assert study.get_trials()[0].state == TrialState.RUNNING
    time.sleep(3 + 0.5)
    fail_stale(study)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[1].user_attrs[search.storage.REPEAT_OF] == 0


def test_a_beating_trial_is_never_failed_by_the_check_for_missing_heartbeats(tmp_path, monkeypatch):
    monkeypatch.setattr(search.storage, "HEARTBEAT_SECONDS", 1)
    url = storage_url(tmp_path)
    study = optuna.create_study(storage=open_storage(url, heartbeat=True), study_name="gap")
    live = take_slot(study, url, 2)
    assert live is not None
    with Heartbeat(study, live):
        for _ in range(3):
            fail_stale(study)
            time.sleep(1.6)
        fail_stale(study)
    assert study.get_trials()[0].state == TrialState.RUNNING


# ------------------------------------------------------------------------------- budget race (in process)


def test_a_trial_finished_by_another_worker_is_counted(tmp_path, monkeypatch):
    """Worker 1's trial is running when worker 0 counts the finished trials (0 of budget 1);
    worker 1 finishes it before worker 0 holds the budget lock. Worker 0 must then find the
    budget spent, not ask for a second trial. Confirmation (on) then leaves worker 1's trial
    alone: it has no architecture, so it cannot be rebuilt (its repeats were new candidates,
    trained without end)."""
    settings = quick_settings(tmp_path, budget=1, confirm=2)
    open_search(settings)  # creates the study, as `--workers` does before starting workers
    other = optuna.load_study(study_name=settings.study, storage=settings.storage_url)
    running = other.ask()  # worker 1's trial
    real = search.backends.optuna_driver.take_slot

    def worker_1_finishes_first(study, url, budget):
        monkeypatch.setattr(search.backends.optuna_driver, "take_slot", real)
        running.set_user_attr("status", "ok")
        other.tell(running, [0.5, 5.0])
        return real(study, url, budget)

    monkeypatch.setattr(search.backends.optuna_driver, "take_slot", worker_1_finishes_first)
    study = run_optuna_search(settings)
    states = [t.state.name for t in study.get_trials()]
    assert count_finished(study) == 1, f"budget 1, finished {count_finished(study)}: {states}"
    assert len(states) == 1, f"a trial without an architecture was repeated: {states}"


def test_a_trial_finished_while_the_budget_is_counted_is_not_missed(tmp_path, monkeypatch):
    """Worker 1 finishes its trial while worker 0 counts, under the lock, what is running
    and what is finished (budget 1). Counted in two reads (finished, then running) the trial
    was in neither, worker 0 asked for a second trial, and `--workers 2 --budget 5` ended
    with 6 (seen in CI). Counted in one read, worker 0 finds the budget taken."""
    url = storage_url(tmp_path)
    study = optuna.create_study(storage=open_storage(url, heartbeat=True), study_name="race")
    other = optuna.load_study(study_name="race", storage=url)
    running = other.ask()  # worker 1's trial
    running.set_user_attr("status", "ok")
    read = search.storage.read_trial_rows  # what the study's index reads (search.storage.TrialIndex)

    def worker_1_finishes_after_this_read(*args, **kwargs):
        trials = read(*args, **kwargs)
        if not other.get_trials(states=(TrialState.COMPLETE,)):
            other.tell(running, 0.5)
        return trials

    monkeypatch.setattr(search.storage, "read_trial_rows", worker_1_finishes_after_this_read)
    assert take_slot(study, url, 1) is None, "a second trial was asked for with budget 1"
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"]


def test_a_trial_failed_as_stale_while_alive_leaves_its_retry_to_finish(tmp_path, monkeypatch, capsys):
    """A worker whose heartbeat stalls past the grace period (an overloaded machine or
    storage) finds its trial failed by another worker, with a retry queued, when it tells
    the result. It says so in one line and goes on; the retry spends the budget."""
    settings = quick_settings(tmp_path, budget=1).replace(quiet=False)
    real = search.backends.optuna_driver.evaluate_candidate
    stalled: list[int] = []

    def another_worker_fails_it_meanwhile(arch, hyperparameters, plan, seed, number, **kwargs):
        outcome = real(arch, hyperparameters, plan, seed, number, **kwargs)
        if not stalled:
            stalled.append(number)
            other = optuna.load_study(
                study_name=settings.study, storage=open_storage(settings.storage_url, heartbeat=True)
            )
            frozen = other.get_trials(deepcopy=False)[number]
            other._storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL)
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(other, other.get_trials()[number])
        return outcome

    monkeypatch.setattr(search.backends.optuna_driver, "evaluate_candidate", another_worker_fails_it_meanwhile)
    study = run_optuna_search(settings)
    states = [t.state.name for t in study.get_trials()]
    assert states == ["FAIL", "COMPLETE"], states
    retry = study.get_trials()[1]
    assert retry.system_attrs.get("failed_trial") == stalled[0] and retry.user_attrs.get("retry_of") == stalled[0]
    err = capsys.readouterr().err
    assert f"trial {stalled[0]}: failed by another worker while it ran" in err, err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------- 1. kill -9 and resume (CLI)


def test_kill_9_and_resume(background):
    """What the code does: the resumed run counts the killed trial as running until its
    heartbeat is stale (take_slot: finished + running >= budget -> wait), so it trains the
    rest of the budget minus one, then waits; take_slot fails the stale trial (Optuna's
    fail_stale_trials, grace 30 s) and RetryHeartbeatStaleTrialCallback queues it as a
    WAITING trial, which the next ask() runs. With this budget the retry is always needed,
    so the killed trial always ends FAIL and its retry COMPLETE."""
    job = background["kill"].result()
    resumed, before, after = job["resumed"], job["before"], job["after"]
    killed = job["killed"]
    assert resumed.returncode == 0, describe(resumed)
    assert "Traceback" not in resumed.stderr, describe(resumed)
    done_before = sum(1 for t in before.values() if t.state == TrialState.COMPLETE)
    assert done_before >= 1
    assert f": {done_before}/{KILL_BUDGET} finished trials" in resumed.stderr, describe(resumed)

    by_number = {t.number: t for t in after}
    states = {t.number: t.state.name for t in after}
    assert len(by_number) == len(after)
    # Exactly the budget finished, all feasible and ok; nothing left running or waiting.
    finished = [t for t in after if t.state == TrialState.COMPLETE]
    assert len(finished) == KILL_BUDGET, states
    assert all(t.user_attrs["status"] == "ok" for t in finished)
    assert not [n for n, s in states.items() if s in ("RUNNING", "WAITING")], states
    # Nothing finished before the kill was lost, changed or repeated.
    for number, old in before.items():
        if old.state == TrialState.COMPLETE:
            new = by_number[number]
            assert new.state == TrialState.COMPLETE and new.values == old.values, number
            assert new.params == old.params and new.user_attrs == old.user_attrs, number
    assert not any(
        t.user_attrs.get("retry_of", t.system_attrs.get("failed_trial"))
        in {n for n, o in before.items() if o.state == TrialState.COMPLETE}
        for t in after
    ), "a finished trial was repeated"
    # The killed trial was failed by the stale-heartbeat check (fail_and_requeue would have
    # written a fail_reason 'interrupted') ...
    stale = by_number[killed]
    assert stale.state == TrialState.FAIL, states
    assert "fail_reason" not in stale.user_attrs, stale.user_attrs
    # ... and retried exactly once, with its parameters and its seed.
    retries = [
        t for t in after if t.system_attrs.get("failed_trial") == killed or t.user_attrs.get("retry_of") == killed
    ]
    assert len(retries) == 1, states
    retry = retries[0]
    assert retry.number > killed
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["status"] == "ok"
    assert retry.system_attrs["failed_trial"] == killed  # RetryHeartbeatStaleTrialCallback
    assert retry.system_attrs["retry_history"] == [killed]
    assert retry.user_attrs["retry_of"] == killed
    assert retry.params == stale.params
    assert retry.user_attrs["seed"] == trial_seed(Settings(seed=0), killed) == killed
    # Every other trial is an original with its own seed.
    for t in after:
        if t.number != retry.number and "seed" in t.user_attrs:
            assert t.user_attrs["seed"] == t.number
    assert len(after) == KILL_BUDGET + 1, states  # the budget + the failed stale trial


def test_checkpoint_every_through_the_cli(background):
    job = background["checkpoint_cli"].result()
    proc = job["proc"]
    assert proc.returncode == 0, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    trials = load(job["dir"]).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE]
    assert trials[0].user_attrs["epochs_run"] == 2 and len(trials[0].user_attrs["curve"]) == 2
    # The folder exists only if a checkpoint was saved (epoch 1 of 2); the file is removed at the end.
    folder = job["dir"] / STUDY / "checkpoints"
    assert folder.is_dir(), "no checkpoint was written"
    assert not list(folder.iterdir()), f"checkpoints left behind: {list(folder.iterdir())}"


def test_max_failures_through_the_cli(background):
    job = background["max_failures_cli"].result()
    proc = job["proc"]
    assert proc.returncode == 1, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, describe(proc)
    assert proc.stderr.strip().splitlines()[-1] == errors[0], "the error line is the last line"
    assert errors[0].startswith("error: 2 trials in a row failed (last: loss became"), errors[0]
    assert "the study is kept" in errors[0]
    trials = load(job["dir"]).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    assert all("loss" in t.user_attrs["fail_reason"] for t in trials)


# ------------------------------------------------------------------------------- 4. --workers 2


def test_two_workers_on_sqlite(background):
    job = background["workers"].result()
    proc = job["proc"]
    assert proc.returncode == 0, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    trials = load(job["dir"]).get_trials()
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE"] * 5, states
    assert len({t.number for t in trials}) == 5
    assert sorted(t.user_attrs["seed"] for t in trials) == [0, 1, 2, 3, 4]
    for worker in (0, 1):
        trial_lines = re.findall(rf"^\[worker {worker}\] \[[#-]+\] (\d+)/5 \|", proc.stderr, re.MULTILINE)
        assert trial_lines, f"no progress line from worker {worker}:\n{proc.stderr}"
    counts = [int(n) for n in re.findall(r"^\[worker \d\] \[[#-]+\] (\d+)/5 \|", proc.stderr, re.MULTILINE)]
    assert len(counts) == 5 and max(counts) == 5, proc.stderr
