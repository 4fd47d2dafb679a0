"""End-to-end tests of the search: the real CLI (``python run_search.py ...``) in subprocesses,
real training on the offline ``digits`` data set, real Optuna SQLite storage.

Time budget (2 CPU cores): every search uses ``--preset quick --epochs 1 --threads 1`` and a
budget of a few trials. The first search runs once (module fixture) and several tests read
its storage; searches that do not depend on it (FLOPs ceiling, --tune, baselines, a space
file, failing trials) are started in the background, two at a time, when the module starts,
so that they overlap with the sequential ones. Every run writes into its own tmp folder.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from concurrent.futures import Future
from importlib import metadata
from pathlib import Path

import optuna
import pytest
from _studies import load, storage_url
from cli_process import HANG_SECONDS, CliRunner
from optuna.trial import TrialState

from models import Architecture, validate
from search.backends.study import baseline_architectures
from search.backends.trial import CONSTRAINT_KEY, evaluation_plan
from search.evaluation.candidate import evaluate_candidate
from search.evaluation.cost import architecture_cost, cheapest_and_dearest
from search.evaluation.evaluate import evaluate
from search.evaluation.train import TrialFailed
from search.settings import TUNABLE, Settings, TrainingSettings, resolve_device
from spaces import get_space

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
STUDY = "vgg_hetconv-digits"
QUICK = ["--preset", "quick", "--epochs", "1", "--threads", "1", "--no-report", "--confirm", "0"]
RUN_TIMEOUT = HANG_SECONDS  # per CLI run, only a hang (a budget-5 quick search takes ~15 s)

optuna.logging.set_verbosity(optuna.logging.ERROR)


# ------------------------------------------------------------------------------- helpers


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"command: {' '.join(proc.args[1:])}\nexit code {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"


def study_names(results_dir: Path) -> list[str]:
    if not (results_dir / "studies.db").exists():
        return []
    return sorted(optuna.get_all_study_names(storage=storage_url(results_dir)))


def complete(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE]


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``error: ...`` line of a refused run (asserts there is exactly one line)."""
    assert "Traceback" not in proc.stderr, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), describe(proc)
    return lines[0]


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def runner():
    r = CliRunner(timeout=RUN_TIMEOUT)
    yield r
    r.close()


@pytest.fixture(scope="module")
def space():
    return get_space("vgg_hetconv", width=0.25)


@pytest.fixture(scope="module")
def ceiling(space) -> float:
    """A FLOPs ceiling between the cheapest and the dense candidate, low enough that random
    candidates are often over it."""
    cheapest = architecture_cost(cheapest_and_dearest(space)[0]).mflops
    dense = architecture_cost(space.dense()).mflops
    assert cheapest < dense
    return round(cheapest + 0.2 * (dense - cheapest), 3)


def _job_ceiling(runner: CliRunner, work: Path, ceiling: float) -> dict:
    d = work / "results"
    proc = runner.run([*QUICK, "--budget", "2", "--max-mflops", ceiling, "--results-dir", d], work)
    return {"proc": proc, "dir": d}


def _job_tuned(runner: CliRunner, work: Path) -> dict:
    d = work / "results"
    proc = runner.run(
        [*QUICK, "--tune", "lr,batch_size", "--budget", "2", "--study-name", "tuned", "--results-dir", d], work
    )
    before = len(load(d, "tuned").trials) if proc.returncode == 0 else None
    untuned = runner.run([*QUICK, "--budget", "3", "--study-name", "tuned", "--results-dir", d], work)
    after = len(load(d, "tuned").trials) if proc.returncode == 0 else None
    return {"proc": proc, "untuned": untuned, "before": before, "after": after, "dir": d}


def _job_baselines(runner: CliRunner, work: Path) -> dict:
    d = work / "results"
    proc = runner.run([*QUICK, "--baselines", "--budget", "3", "--space", "vgg_hetconv", "--results-dir", d], work)
    return {"proc": proc, "dir": d}


SPACE_FILE = """\
model: vgg16
width: 0.25
choices: [dense, "hetconv:2", "hetconv:4"]
"""
SPACE_FILE_CHOICES = {"dense", "hetconv:2", "hetconv:4"}


def _job_space_file(runner: CliRunner, work: Path) -> dict:
    d = work / "results"
    path = work / "tiny_space.yaml"
    path.write_text(SPACE_FILE)
    proc = runner.run([*QUICK, "--space", path, "--budget", "1", "--results-dir", d], work)
    return {"proc": proc, "dir": d, "study": "tiny_space-digits"}


def _job_failures(runner: CliRunner, work: Path) -> dict:
    d = work / "results"
    proc = runner.run([*QUICK, "--lr", "1e6", "--max-failures", "2", "--budget", "3", "--results-dir", d], work)
    return {"proc": proc, "dir": d}


@pytest.fixture(scope="module")
def background(runner, tmp_path_factory, ceiling) -> dict[str, Future]:
    """Independent searches, started at once and run two at a time while the sequential tests go on."""
    mk = tmp_path_factory.mktemp
    return {
        "ceiling": runner.submit(_job_ceiling, runner, mk("ceiling"), ceiling),
        "tuned": runner.submit(_job_tuned, runner, mk("tuned")),
        "baselines": runner.submit(_job_baselines, runner, mk("baselines")),
        "space_file": runner.submit(_job_space_file, runner, mk("space_file")),
        "failures": runner.submit(_job_failures, runner, mk("failures")),
    }


@pytest.fixture(scope="module")
def first_run(runner, background, tmp_path_factory) -> dict:
    """``--budget 3`` on a new results folder; a snapshot of what it left (later runs add to it)."""
    work = tmp_path_factory.mktemp("main")
    d = work / "results"
    proc = runner.run([*QUICK, "--budget", "3", "--results-dir", d], work)
    assert proc.returncode == 0, describe(proc)
    study = load(d)
    run_json = d / STUDY / "run.json"
    return {
        "proc": proc,
        "dir": d,
        "work": work,
        "trials": study.get_trials(),
        "user_attrs": dict(study.user_attrs),
        "metric_names": study.metric_names,
        "directions": list(study.directions),
        "run_json": json.loads(run_json.read_text()) if run_json.exists() else None,
    }


@pytest.fixture(scope="module")
def continued(runner, first_run) -> dict:
    proc = runner.run([*QUICK, "--budget", "5", "--results-dir", first_run["dir"]], first_run["work"])
    return {"proc": proc, "trials": load(first_run["dir"]).get_trials()}


# ------------------------------------------------------------------------------- 1. first search


def test_first_search_writes_three_complete_trials(first_run):
    trials = first_run["trials"]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert [t.number for t in trials] == [0, 1, 2]


def test_trial_attributes(first_run, space):
    dense_cost = architecture_cost(space.dense())
    for trial in first_run["trials"]:
        attrs = trial.user_attrs
        for key in (
            "architecture",
            "mflops",
            "mflops_all_ops",
            "params",
            "curve",
            "train_seconds",
            "device",
            "seed",
            "status",
            "epochs_run",
        ):
            assert key in attrs, f"trial {trial.number} has no user attr {key!r}: {sorted(attrs)}"
        arch = Architecture.from_json(json.loads(json.dumps(attrs["architecture"])))
        validate(arch)
        assert (arch.model, arch.width, arch.num_classes) == ("vgg16", 0.25, 10)
        assert arch == space.from_params(trial.params), "architecture attr differs from the trial's params"
        assert attrs["status"] == "ok"
        assert attrs["device"] == "cpu"
        assert isinstance(attrs["seed"], int)
        assert attrs["epochs_run"] == 1
        assert attrs["train_seconds"] > 0
        curve = attrs["curve"]
        assert isinstance(curve, list) and len(curve) == 1
        for epoch in curve:
            assert 0.0 <= epoch["val_accuracy"] <= 1.0
            assert math.isfinite(epoch["val_loss"]) and epoch["val_loss"] > 0
        accuracy, mflops = trial.values
        assert 0.0 <= accuracy <= 1.0
        assert accuracy == pytest.approx(curve[-1]["val_accuracy"], abs=1e-12)
        assert mflops == pytest.approx(attrs["mflops"], abs=1e-12)
        # The recorded cost is the cost of the architecture rebuilt from its JSON.
        cost = architecture_cost(arch)
        assert attrs["mflops"] == pytest.approx(cost.mflops, abs=1e-9)
        assert attrs["mflops_all_ops"] == pytest.approx(cost.mflops_all_ops, abs=1e-9)
        assert attrs["params"] == cost.params
        assert attrs["mflops"] <= dense_cost.mflops + 1e-9
        assert attrs["mflops_all_ops"] > attrs["mflops"]


def test_study_attributes(first_run, space):
    attrs = first_run["user_attrs"]
    for key in ("space", "dataset", "objectives", "protocol", "reference_point"):
        assert key in attrs, f"study has no user attr {key!r}: {sorted(attrs)}"
    assert attrs["dataset"] == "digits"
    assert attrs["objectives"] == ["accuracy", "mflops"]
    assert attrs["space"] == space.fingerprint()
    assert attrs["protocol"]["epochs"] == 1 and attrs["protocol"]["dataset"] == "digits"
    assert attrs["reference_point"]["mflops"] == pytest.approx(architecture_cost(space.dense()).mflops)
    assert first_run["metric_names"] == ["accuracy", "mflops"]
    assert first_run["directions"] == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]


def test_run_json(first_run):
    run = first_run["run_json"]
    assert run is not None, f"{first_run['dir'] / STUDY / 'run.json'} was not written"
    assert run["study"] == STUDY
    assert run["settings"]["budget"] == 3
    assert run["settings"]["training"]["epochs"] == 1
    assert run["settings"]["training"]["dataset"] == "digits"
    for package in ("torch", "optuna", "ptflops"):
        assert run["versions"][package] == metadata.version(package)


def test_progress_lines(first_run):
    stderr = first_run["proc"].stderr
    assert "Traceback" not in stderr
    assert any("3/3" in line and "pareto" in line for line in stderr.splitlines()), stderr


# ------------------------------------------------------------------------------- 2-3. continuing


def test_rerun_with_larger_budget_adds_the_difference(continued, first_run):
    proc = continued["proc"]
    assert proc.returncode == 0, describe(proc)
    trials = continued["trials"]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    seeds = [t.user_attrs["seed"] for t in trials]
    assert len(set(seeds)) == 5, seeds
    # The first three trials are untouched.
    for old, new in zip(first_run["trials"], trials[:3]):
        assert (old.params, old.values, old.user_attrs) == (new.params, new.values, new.user_attrs)


def test_rerun_with_the_same_budget_adds_nothing(runner, continued, first_run):
    assert continued["proc"].returncode == 0
    proc = runner.run([*QUICK, "--budget", "5", "--results-dir", first_run["dir"]], first_run["work"])
    assert proc.returncode == 0, describe(proc)
    trials = load(first_run["dir"]).get_trials()
    assert len(trials) == 5
    assert [(t.number, t.values) for t in trials] == [(t.number, t.values) for t in continued["trials"]]


# ------------------------------------------------------------------------------- 4. refusals
# Refused runs (a changed protocol, width or objectives against this study, bad options) are
# the table of tests/test_bad_input_cli.py, on a study made the same way.


# ------------------------------------------------------------------------------- 5. FLOPs ceiling


def test_flops_ceiling(background, ceiling, space):
    job = background["ceiling"].result()
    proc = job["proc"]
    assert proc.returncode == 0, describe(proc)
    trials = load(job["dir"]).get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    feasible = [t for t in trials if t.user_attrs.get("status") == "ok"]
    infeasible = [t for t in trials if t.user_attrs.get("status") == "infeasible"]
    assert len(feasible) == 2, [(t.number, t.user_attrs.get("status")) for t in trials]
    assert len(feasible) + len(infeasible) == len(trials)
    for t in feasible:
        assert t.user_attrs["mflops"] <= ceiling
        assert t.values[1] <= ceiling
        assert t.constraints[CONSTRAINT_KEY] <= 0
        assert "curve" in t.user_attrs
    # Random candidates of vgg_hetconv at this ceiling are mostly too expensive.
    assert infeasible, f"no candidate was over --max-mflops {ceiling}; the test no longer covers infeasible trials"
    for t in infeasible:
        mflops = t.user_attrs["mflops"]
        assert mflops > ceiling
        assert t.values == [0.0, pytest.approx(mflops)]
        assert t.constraints[CONSTRAINT_KEY] > 0
        assert t.constraints[CONSTRAINT_KEY] == pytest.approx(mflops - ceiling)
        assert "curve" not in t.user_attrs and "train_seconds" not in t.user_attrs, (
            "an infeasible candidate was trained"
        )
        assert architecture_cost(space.from_params(t.params)).mflops == pytest.approx(mflops)
    assert "over the ceiling" in proc.stderr


# ------------------------------------------------------------------------------- 6. --tune


def test_tune_records_hyperparameters(background):
    job = background["tuned"].result()
    proc = job["proc"]
    assert proc.returncode == 0, describe(proc)
    study = load(job["dir"], "tuned")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    low, high = TUNABLE["lr"][1]
    for t in trials:
        assert {"hp_lr", "hp_batch_size"} <= set(t.params), t.params
        assert low <= t.params["hp_lr"] <= high
        assert t.params["hp_batch_size"] in TUNABLE["batch_size"][1]
        assert t.user_attrs["hyperparameters"] == {"lr": t.params["hp_lr"], "batch_size": t.params["hp_batch_size"]}
    assert study.user_attrs["protocol"]["tune"] == ["batch_size", "lr"]


def test_tuned_study_refuses_a_run_without_tune(background):
    job = background["tuned"].result()
    assert job["proc"].returncode == 0, describe(job["proc"])
    untuned = job["untuned"]
    assert untuned.returncode == 2, describe(untuned)
    error_line(untuned)
    assert job["after"] == job["before"] == 2


# ------------------------------------------------------------------------------- 7. baselines


def test_baselines_come_first(background, space):
    job = background["baselines"].result()
    proc = job["proc"]
    assert proc.returncode == 0, describe(proc)
    expected = list(baseline_architectures(space).items())[:3]
    # vgg_hetconv has no "dense" choice: its dense-equivalent baseline is P = 1.
    assert expected[0][0] == "1" and "dense" not in baseline_architectures(space)
    trials = sorted(complete(load(job["dir"]).get_trials()), key=lambda t: t.number)
    assert len(trials) == 3
    assert [t.user_attrs.get("baseline") for t in trials] == [value for value, _ in expected]
    for t, (value, arch) in zip(trials, expected):
        recorded = Architecture.from_json(t.user_attrs["architecture"])
        assert len(set(recorded.layers)) == 1, f"baseline {value} is not uniform: {recorded.summary()}"
        assert recorded == arch
        assert t.user_attrs["status"] == "ok"


# ------------------------------------------------------------------------------- 8. space file


def test_space_file(background):
    job = background["space_file"].result()
    proc = job["proc"]
    assert proc.returncode == 0, describe(proc)
    assert study_names(job["dir"]) == [job["study"]]
    study = load(job["dir"], job["study"])
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE]
    assert set(trials[0].params.values()) <= SPACE_FILE_CHOICES, trials[0].params
    arch = Architecture.from_json(trials[0].user_attrs["architecture"])
    assert {spec.label for spec in arch.layers} <= SPACE_FILE_CHOICES
    assert arch.width == 0.25 and len(arch.layers) == 12
    assert study.user_attrs["space"]["space"] == "tiny_space"


# ------------------------------------------------------------------------------- 9-10. in process


def test_training_learns(space):
    training = TrainingSettings(dataset="digits", epochs=5, batch_size=64, lr=0.1, warmup_epochs=0.5)
    result = evaluate(space.dense(), training, seed=0)
    assert result.accuracy > 0.6, f"validation accuracy {result.accuracy} after 5 epochs (chance is 0.1)"
    assert result.epochs_run == 5 and len(result.curve) == 5
    assert result.curve[-1].val_accuracy == result.accuracy
    assert not result.stopped_early
    assert result.device == "cpu"


def test_nan_loss_stops_in_the_first_epoch(space):
    training = TrainingSettings(dataset="digits", epochs=3, batch_size=64, lr=1e6, warmup_epochs=0.5)
    epochs_seen = []
    with pytest.raises(TrialFailed) as info:
        evaluate(space.dense(), training, seed=0, on_epoch=epochs_seen.append)
    message = str(info.value)
    assert "loss" in message and re.search(r"\bepoch 1\b", message), message
    assert epochs_seen == [], "training went on past the first epoch"


def test_nan_loss_through_the_shared_candidate_path(space):
    settings = Settings(training=TrainingSettings(dataset="digits", epochs=3, batch_size=64, lr=1e6, warmup_epochs=0.5))
    arch = space.uniform(2)
    plan = evaluation_plan(settings, space, resolve_device(settings.training.device))
    outcome = evaluate_candidate(arch, {}, plan, seed=0, number=7)
    assert outcome.state == "failed"
    assert outcome.values is None
    assert outcome.attrs["status"] == "failed"
    assert "loss" in outcome.attrs["fail_reason"] and re.search(r"\bepoch 1\b", outcome.attrs["fail_reason"])
    assert outcome.attrs["architecture"] == arch.to_json()
    assert "trial 7" in outcome.line  # (and it stopped in epoch 1, as the reason says: no time bound needed)


# ------------------------------------------------------------------------------- 11. failing trials


def test_failing_trials_abort_after_max_failures(background):
    job = background["failures"].result()
    proc = job["proc"]
    assert proc.returncode == 1, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "in a row" in errors[0], describe(proc)
    trials = load(job["dir"]).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    for t in trials:
        assert "loss" in t.user_attrs["fail_reason"], t.user_attrs
        assert t.user_attrs["status"] == "failed"
        assert "architecture" in t.user_attrs
    assert (job["dir"] / STUDY / "run.json").exists()
