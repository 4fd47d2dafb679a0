"""End-to-end tests of ``--strategy one-shot`` (search/backends/one_shot.py, search/strategies/supernet.py).

The real CLI (``python run_search.py ...``) in subprocesses, real supernet training and real
retraining on the offline ``digits`` data set, width 0.25, one epoch, ``--threads 1``:

1. a search of 12 scored candidates with ``--retrain-top 2`` and ``--baselines``: both
   studies, their attributes, the saved supernet, the reports and the exports, and that the
   two fidelities are not mixed;
2. the same command with ``--budget 16``: the supernet is reused (not retrained), exactly 4
   candidates are scored, and no configuration is retrained twice;
3. ``score()`` is deterministic and, thanks to BatchNorm recalibration, independent of the
   candidate scored before it (on the supernet trained in 1).

Two more tests, with cheap stand-ins for supernet training and scoring, check that
``--threads`` reaches supernet training and scoring, and that one one-shot study never
holds the scores of two different supernets.

Subprocesses run with ``OMP_NUM_THREADS=1`` as well as ``--threads 1``: two OpenMP threads on
two shared cores make supernet training and scoring several times slower.
Runtime: about 45 s on an idle 2-core machine.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import optuna
import pytest
import torch
from _studies import load
from cli_process import HANG_SECONDS, run_cli
from optuna.trial import TrialState

from models import Architecture

ROOT = Path(__file__).resolve().parent.parent
STUDY = "vgg_hetconv-digits"
ONE_SHOT = f"{STUDY}-oneshot"
COMMAND = [
    "--preset",
    "quick",
    "--confirm",
    "0",
    "--epochs",
    "1",
    "--supernet-epochs",
    "1",
    "--strategy",
    "one-shot",
    "--retrain-top",
    "2",
    # The uniform models are scored first. After one supernet epoch a random candidate scores
    # at chance, so the front of random candidates alone is a matter of float rounding: on some
    # machines one of them is both the cheapest and the luckiest, and the front has a single
    # member. The baselines hold the space's largest candidate (P = 1, the supernet's best
    # trained, far above chance): while it scores highest (the test checks it first), it is on
    # the front, and so is the cheapest candidate scored, another one.
    "--baselines",
    "--threads",
    "1",
]
RUN_TIMEOUT = HANG_SECONDS

optuna.logging.set_verbosity(optuna.logging.ERROR)


def one_shot_cli(args: list, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(args, cwd, timeout=RUN_TIMEOUT)


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"


def complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def one_shot_front(study: optuna.Study):
    from search.reporting.front import pareto_records
    from search.storage import load_records, study_objectives

    return pareto_records(load_records(study), study_objectives(study))


def supernet_files(results: Path) -> list[Path]:
    return sorted(results.rglob("supernet-*.pt"))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("one_shot")
    results = work / "D"
    proc = one_shot_cli([*COMMAND, "--budget", "12", "--results-dir", results], work)
    files = supernet_files(results)
    return {
        "work": work,
        "results": results,
        "proc": proc,
        "supernets": files,
        "mtimes": {p: p.stat().st_mtime_ns for p in files},
    }


@pytest.fixture(scope="module")
def second_run(first_run) -> dict:
    assert first_run["proc"].returncode == 0, describe(first_run["proc"])
    results = first_run["results"]
    before = load(results, STUDY)
    retrained_before = [t.user_attrs.get("from_one_shot") for t in before.get_trials(deepcopy=False)]
    proc = one_shot_cli([*COMMAND, "--budget", "16", "--results-dir", results], first_run["work"])
    return {"proc": proc, "retrained_before": retrained_before}


# ------------------------------------------------------------------------------ 1. first search


def test_first_one_shot_search(first_run):
    proc, results = first_run["proc"], first_run["results"]
    assert proc.returncode == 0, describe(proc)

    # the one-shot study: 12 scored candidates, its own fidelity, linked to the ordinary study
    one_shot = load(results, ONE_SHOT)
    scored = complete(one_shot)
    assert len(scored) == 12, [(t.number, t.state.name) for t in one_shot.trials]
    for t in scored:
        attrs = t.user_attrs
        assert attrs.get("fidelity") == "one-shot" and attrs.get("status") == "ok", (t.number, attrs)
        Architecture.from_json(attrs["architecture"])
        assert attrs["mflops"] > 0 and attrs["score_seconds"] >= 0, (t.number, attrs)
        assert t.values[1] == pytest.approx(attrs["mflops"]) and 0.0 <= t.values[0] <= 1.0
    assert one_shot.user_attrs["fidelity"] == "one-shot"
    assert one_shot.user_attrs["retrained_study"] == STUDY
    run_json = json.loads((results / ONE_SHOT / "run.json").read_text())
    assert run_json["study"] == ONE_SHOT and run_json["strategy"] == "one-shot"
    assert run_json["settings"]["sampler"] == "nsga2"  # the default sampler of --strategy one-shot

    # the baselines: scored first, as baselines
    baselines = {t.user_attrs["baseline"]: t for t in scored if "baseline" in t.user_attrs}
    assert sorted(baselines) == ["1", "16", "2", "4", "8"] and max(t.number for t in baselines.values()) == 4
    largest = baselines["1"]
    assert all(t.values[0] < largest.values[0] for t in scored if t is not largest), [t.values for t in scored]

    # the ordinary study: the two ends of the one-shot front, trained from scratch
    front = one_shot_front(one_shot)
    assert len(front) >= 2, "the one-shot front has a single member: --retrain-top 2 can retrain only one"
    by_cost = sorted(front, key=lambda r: r.values["mflops"])
    expected = {by_cost[0].number, by_cost[-1].number}  # _spread(front, 2): both ends
    standalone = load(results, STUDY)
    retrained = complete(standalone)
    assert len(standalone.trials) == len(retrained) == 2, [(t.number, t.state.name) for t in standalone.trials]
    assert {t.user_attrs.get("from_one_shot") for t in retrained} == expected
    scored_by_number = {t.number: t for t in scored}
    for t in retrained:
        source = scored_by_number[t.user_attrs["from_one_shot"]]
        assert Architecture.from_json(t.user_attrs["architecture"]) == Architecture.from_json(
            source.user_attrs["architecture"]
        )
        assert t.user_attrs["fidelity"] == "full" and t.user_attrs["status"] == "ok"
        assert t.user_attrs["one_shot_score"] == pytest.approx(source.values[0])
        assert t.user_attrs["epochs_run"] == 1

    # The supernet: search/backends/one_shot.py's docstring says <results-dir>/<study>/supernet/, and
    # supernet_path uses settings.study_dir of the ORDINARY study's settings, so it is under
    # D/vgg_hetconv-digits/supernet/ (not D/vgg_hetconv-digits-oneshot/supernet/).
    files = first_run["supernets"]
    assert [p.parent for p in files] == [results / STUDY / "supernet"], files
    assert not (results / ONE_SHOT / "supernet").exists()
    assert Path(run_json["supernet"]).resolve() == files[0].resolve()
    assert {t.user_attrs["supernet"] for t in scored} == {files[0].name}

    # reports and exports of both studies
    page = (results / ONE_SHOT / "report.html").read_text(encoding="utf-8")
    assert "retrained from scratch (stand-alone accuracy)" in page and "retrained front" in page
    assert (results / STUDY / "report.html").is_file()
    for name, fidelity in ((ONE_SHOT, "one-shot"), (STUDY, "full")):
        configs = sorted((results / name / "pareto").glob("trial_*.json"))
        assert configs, f"no exported configs in {results / name / 'pareto'}"
        for path in configs:
            config = json.loads(path.read_text())
            assert config["study"] == name and config["metrics"]["fidelity"] == fidelity, (path, config["metrics"])

    # the fronts are not mixed: each pareto.csv holds only its own study's trials
    retrained_by_number = {t.number: t for t in retrained}
    with (results / STUDY / "pareto.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows
    for row in rows:
        trial = retrained_by_number[int(row["number"])]
        assert trial.user_attrs["fidelity"] == "full"
        assert float(row["accuracy"]) == pytest.approx(trial.values[0])
    with (results / ONE_SHOT / "pareto.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {int(r["number"]) for r in rows} == {r.number for r in front}
    for row in rows:
        assert float(row["accuracy"]) == pytest.approx(scored_by_number[int(row["number"])].values[0])


# ------------------------------------------------------------------------------ 2. continuing


def test_rerun_reuses_the_supernet_and_retrains_nothing_twice(first_run, second_run):
    proc, results = second_run["proc"], first_run["results"]
    assert proc.returncode == 0, describe(proc)
    assert "reusing the trained supernet" in proc.stderr, proc.stderr[-3000:]
    assert "training the supernet" not in proc.stderr
    assert supernet_files(results) == first_run["supernets"]
    for path, mtime in first_run["mtimes"].items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"

    one_shot = load(results, ONE_SHOT)
    scored = complete(one_shot)
    assert len(scored) == 16  # exactly 4 more
    assert sorted(t.number for t in scored)[-4:] == [12, 13, 14, 15]

    standalone = load(results, STUDY)
    trials = standalone.get_trials(deepcopy=False)
    origins = [t.user_attrs.get("from_one_shot") for t in trials]
    assert None not in origins
    assert len(origins) == len(set(origins)), f"a one-shot trial was retrained twice: {origins}"
    assert set(second_run["retrained_before"]) <= set(origins)
    architectures = [json.dumps(t.user_attrs["architecture"], sort_keys=True) for t in trials]
    assert len(architectures) == len(set(architectures)), "one configuration was retrained twice"
    front = {r.number for r in one_shot_front(one_shot)}
    for number in set(origins) - set(second_run["retrained_before"]):  # newly retrained: on the new front
        assert number in front
    assert all(t.state == TrialState.COMPLETE for t in trials)


# ------------------------------------------------------------------------------ 3. scoring


def test_score_is_deterministic_and_independent_of_the_previous_candidate(first_run):
    from search.evaluation.data import load_dataset
    from search.strategies.supernet import load_supernet, score
    from spaces import get_space

    assert first_run["supernets"], describe(first_run["proc"])
    data = load_dataset("digits", first_run["work"] / "data")
    space = get_space("vgg_hetconv", width=0.25, num_classes=data.num_classes)
    supernet, meta = load_supernet(space, first_run["supernets"][0])
    assert meta["history"][0]["epoch"] == 1
    a, b = supernet.largest(), supernet.smallest()

    def bn_state() -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in supernet.state_dict().items() if "running_" in k}

    first = score(supernet, a, data, device="cpu")
    state_a = bn_state()
    assert score(supernet, a, data, device="cpu") == first
    score_b = score(supernet, b, data, device="cpu")
    state_b = bn_state()
    # B's statistics differ from A's, so without recalibration A would be scored with B's
    assert any(not torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert score(supernet, a, data, device="cpu") == first
    state_again = bn_state()
    assert all(torch.equal(state_a[k], state_again[k]) for k in state_a)
    assert 0.0 <= score_b <= 1.0 and 0.0 <= first <= 1.0


# ------------------------------------------------------------------------------ known bugs


@pytest.fixture
def fake_training(monkeypatch):
    """Stand-ins for supernet training and scoring that record the torch thread count."""
    import search.strategies.supernet as supernet_module

    seen: dict[str, list[int]] = {"train": [], "score": []}

    def train(supernet, data, training, seed, device, **kwargs):
        seen["train"].append(torch.get_num_threads())
        return [{"epoch": 1}]

    def score(supernet, arch, data, **kwargs):
        seen["score"].append(torch.get_num_threads())
        return 0.5

    monkeypatch.setattr(supernet_module, "train_supernet", train)
    monkeypatch.setattr(supernet_module, "score", score)
    return seen


def _settings(tmp_path: Path, **changes):
    from search.settings import Settings, TrainingSettings

    training = TrainingSettings(dataset="digits", epochs=1, batch_size=64, warmup_epochs=0.5, threads=1, device="cpu")
    return Settings(
        space="vgg_hetconv",
        width=0.25,
        training=training,
        strategy="one-shot",
        sampler="nsga2",
        retrain_top=0,
        supernet_epochs=1,
        results_dir=str(tmp_path / "D"),
        quiet=True,
    ).replace(**changes)


def test_threads_option_applies_to_supernet_training_and_scoring(tmp_path, fake_training):
    from search.backends.one_shot import run_one_shot_search

    torch.set_num_threads(2)
    run_one_shot_search(_settings(tmp_path, budget=2))
    assert fake_training["train"] == [1] and fake_training["score"] == [1, 1], fake_training


def test_one_shot_study_does_not_mix_scores_of_two_supernets(tmp_path, fake_training):
    from search.backends.one_shot import run_one_shot_search
    from search.storage import StudyMismatch

    run_one_shot_search(_settings(tmp_path, budget=2, supernet_epochs=1))
    with pytest.raises(StudyMismatch, match="supernet"):
        run_one_shot_search(_settings(tmp_path, budget=4, supernet_epochs=2))


def test_a_supernet_that_did_not_learn_is_refused(tmp_path, monkeypatch):
    """A supernet whose largest candidate is still at chance after training would give every
    candidate a guess for a score: the search stops with one line, before scoring anything,
    and again when a rerun would reuse that supernet."""
    import search.strategies.supernet as supernet_module
    from search.backends.one_shot import one_shot_study_name, run_one_shot_search
    from search.errors import SearchAborted

    def train(supernet, data, training, seed, device, **kwargs):
        return [{"epoch": 1, "val_accuracy_largest": 0.12, "val_accuracy_smallest": 0.1}]  # digits: chance 0.1

    monkeypatch.setattr(supernet_module, "train_supernet", train)
    settings = _settings(tmp_path, budget=2)
    for attempt in ("trained", "reused"):
        with pytest.raises(
            SearchAborted, match=r"the supernet did not learn: .* scores 0\.120 \(chance 0\.100\)"
        ) as err:
            run_one_shot_search(settings)
        assert "\n" not in str(err.value), attempt
        assert supernet_files(tmp_path / "D"), attempt  # kept, named in the message
    assert not load(tmp_path / "D", one_shot_study_name(settings)).trials  # nothing was scored


@pytest.fixture
def failing_score(monkeypatch):
    """Stand-ins for supernet training and scoring; scoring raises the ValueError the real
    ``score`` raises for the candidates whose call number is in ``failing`` (all: None)."""
    import search.strategies.supernet as supernet_module

    state: dict = {"calls": 0, "failing": {1}}

    def train(supernet, data, training, seed, device, **kwargs):
        return [{"epoch": 1}]

    def score(supernet, arch, data, **kwargs):
        state["calls"] += 1
        if state["failing"] is None or state["calls"] - 1 in state["failing"]:
            raise ValueError("score needs a validation split; the data set has none")
        return 0.5

    monkeypatch.setattr(supernet_module, "train_supernet", train)
    monkeypatch.setattr(supernet_module, "score", score)
    return state


def test_a_scoring_error_fails_only_that_trial(tmp_path, failing_score):
    from search.backends.one_shot import run_one_shot_search

    study = run_one_shot_search(_settings(tmp_path, budget=3))
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE], states
    failed = study.trials[1]
    assert failed.user_attrs["status"] == "failed"
    assert failed.user_attrs["fail_reason"] == "ValueError: score needs a validation split; the data set has none"
    assert failed.user_attrs["fidelity"] == "one-shot" and "architecture" in failed.user_attrs
    for t in complete(study):
        assert t.user_attrs["status"] == "ok" and t.values[0] == 0.5


def test_scoring_errors_in_a_row_stop_the_one_shot_search(tmp_path, failing_score):
    from search.backends.one_shot import run_one_shot_search
    from search.errors import SearchAborted

    failing_score["failing"] = None
    with pytest.raises(SearchAborted, match="2 trials in a row failed"):
        run_one_shot_search(_settings(tmp_path, budget=3, max_failures=2))
    study = load(tmp_path / "D", ONE_SHOT)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
