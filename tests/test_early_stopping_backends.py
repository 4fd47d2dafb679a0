"""Early stopping (``--early-stop mo-asha``) through both backends.

1. Optuna backend: the real ``_rung_callback`` on a real SQLite study holding 8 hand-made
   peer trials, driven with synthetic epoch records; every continue/stop decision is
   worked out by hand below (see ``PEERS`` and ``CANDIDATES``).
2. Ray backend: the real scheduler class from ``_make_scheduler`` on the same peers and the
   same candidate values gives the same decisions.
3. Every sampler of the tool keeps working on a study that holds PRUNED trials.
4. End to end, both backends (real training on ``digits``, ``--epochs 3 --eta 2``, so the
   rungs are 1 and 2): early-stopped trials are PRUNED, recorded consistently, spend budget,
   and never reach pareto.csv nor the exported configs.  Both searches start in the
   background when the module starts, so they overlap with the fast tests.

About 2 minutes on 2 idle CPU cores (the two end-to-end searches dominate; 3-4 minutes when
other jobs load the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from cli_process import HANG_SECONDS, ray_cli_env, run_cli, start_cli
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from search.backends.optuna_driver import _rung_callback
from search.backends.sampler import make_sampler
from search.backends.study import count_finished, open_search
from search.evaluation.cost import architecture_cost
from search.evaluation.train import EpochRecord
from search.reporting.front import pareto_records
from search.settings import Settings, TrainingSettings
from search.storage import load_records, study_objectives
from search.strategies.early_stopping import rung_attr, stopping_rule
from spaces import get_space

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used:UserWarning"),
]

ROOT = Path(__file__).resolve().parent.parent
STUDY = "vgg_hetconv-digits"

optuna.logging.set_verbosity(optuna.logging.ERROR)


# =============================================================================================
# The constructed case (worked out by hand)
# =============================================================================================
#
# Settings: epochs 9, min_epochs 1, eta 3  ->  rungs (1, 3); epoch 2 is not a rung.
# quota(n) = max(1, ceil(n / 3)): a trial continues iff its position in the ranking (Pareto
# rank, then crowding distance within the front, largest first, then key order) is < quota.
#
# Peers: (accuracy, MFLOPs) at rung 1, and at rung 3 for trials 0, 1 and 2.
PEERS = {
    0: {"rung_1": [0.95, 19.0], "rung_3": [0.97, 19.0]},  # accurate and expensive
    1: {"rung_1": [0.80, 6.5], "rung_3": [0.85, 6.5]},
    2: {"rung_1": [0.70, 4.8], "rung_3": [0.75, 4.8]},
    3: {"rung_1": [0.60, 11.3]},  # 3..7 are dominated by trial 1
    4: {"rung_1": [0.55, 8.0]},
    5: {"rung_1": [0.50, 12.0]},
    6: {"rung_1": [0.45, 15.0]},
    7: {"rung_1": [0.40, 19.0]},
}
# Candidates, asked in this order (Optuna trial numbers 8, 9, 10), each a uniform model of the
# space whose MFLOPs are counted (width 0.25: '16' 3.70, '4' 6.95, '2' 11.27 MFLOPs):
#
# A = uniform '16' (cheaper than every peer), accuracy 0.10 at rung 1, 0.30 at rung 3.
#   rung 1: n = 9, quota 3. Front {0, 1, 2, A}; crowding: 0 and A are the extremes (inf),
#           ranking 0, A, 1, 2, ...  -> A at position 1 < 3: CONTINUE (a single-metric
#           scheduler would stop it: it is the least accurate of all nine).
#   epoch 2: not a rung -> CONTINUE.
#   rung 3: n = 4 (0, 1, 2, A), quota 2. All four on the front; 0 and A extremes -> ranking
#           0, A, ... -> position 1 < 2: CONTINUE.
# B = uniform '4' (6.95 MFLOPs), accuracy 0.50 at rung 1.
#   rung 1: n = 10 (peers, A, B), quota 4. B is dominated by trial 1 (0.80 @ 6.5), so it comes
#           after the 4 members of the front {0, 1, 2, A}: position >= 4: STOP at rung 1.
# C = uniform '2' (11.27 MFLOPs), accuracy 0.90 at rung 1, 0.70 at rung 3.
#   rung 1: n = 11 (peers, A, B, C), quota 4. Front {0, C, 1, 2, A}: crowding 0, A inf;
#           2: 0.70/0.85 + 1.70/15.30 = 0.82 + 0.18 = 1.01, C: 0.15/0.85 + 12.5/15.30 = 0.99,
#           1: 0.20/0.85 + 6.47/15.30 = 0.66 -> ranking 0, A, 2, C, 1 -> position 3 < 4: CONTINUE.
#   epoch 2: CONTINUE.
#   rung 3: n = 5 (0, 1, 2, A, C), quota 2. C (0.70 @ 11.27) is dominated by trial 1
#           (0.85 @ 6.5): position >= 4: STOP at rung 3.
#
# (name, uniform value, [(epoch, validation accuracy, stop?)])
CANDIDATES = [
    ("A", "16", [(1, 0.10, False), (2, 0.20, False), (3, 0.30, False)]),
    ("B", "4", [(1, 0.50, True)]),
    ("C", "2", [(1, 0.90, False), (2, 0.80, False), (3, 0.70, True)]),
]


def _settings(results_dir: Path) -> Settings:
    return Settings(
        space="vgg_hetconv",
        width=0.25,
        training=TrainingSettings(dataset="digits", epochs=9),
        early_stop="mo-asha",
        min_epochs=1,
        eta=3,
        results_dir=str(results_dir),
        quiet=True,
    )


def _context_with_peers(results_dir: Path):
    context = open_search(_settings(results_dir))
    for attrs in PEERS.values():
        final = [min(1.0, attrs["rung_1"][0] + 0.02), attrs["rung_1"][1]]
        context.study.add_trial(
            optuna.trial.create_trial(state=TrialState.COMPLETE, values=final, user_attrs={"status": "ok", **attrs})
        )
    assert [t.number for t in context.study.get_trials()] == list(PEERS)
    return context


def _mflops(context, value: str) -> float:
    return architecture_cost(context.space.uniform(value)).mflops


def _epoch(epoch: int, accuracy: float) -> EpochRecord:
    return EpochRecord(epoch=epoch, train_loss=1.0, val_loss=1.0, val_accuracy=accuracy, lr=0.05, seconds=0.1)


@pytest.fixture(scope="module")
def constructed(tmp_path_factory):
    """Two separate studies with the same peers (one per backend) and the candidates' MFLOPs."""
    optuna_ctx = _context_with_peers(tmp_path_factory.mktemp("es_optuna"))
    ray_ctx = _context_with_peers(tmp_path_factory.mktemp("es_ray"))
    mflops = {name: _mflops(optuna_ctx, value) for name, value, _ in CANDIDATES}
    # The hand computation above relies on these costs.
    peer_mflops = [attrs["rung_1"][1] for attrs in PEERS.values()]
    assert mflops["A"] < min(peer_mflops)
    assert 6.5 < mflops["B"] < 8.0  # dominated by trial 1, and by nobody cheaper than 6.5
    assert 6.5 < mflops["C"] < 11.3
    assert mflops == pytest.approx({"A": 3.704, "B": 6.948, "C": 11.274}, abs=0.01)
    return optuna_ctx, ray_ctx, mflops


# ----------------------------------------------------------------------------- 1. Optuna


def _costs(arch) -> dict[str, float]:
    """The costs ``evaluate_candidate`` hands to the epoch callback."""
    from search.evaluation.cost import architecture_cost

    cost = architecture_cost(arch)
    return {"mflops": cost.mflops, "params": float(cost.params)}


def test_optuna_rung_callback_decisions(constructed):
    context, _, mflops = constructed
    study = context.study
    assert stopping_rule(context.settings.early_stopping).rungs == (1, 3)
    for offset, (name, value, steps) in enumerate(CANDIDATES):
        arch = context.space.uniform(value)
        study.enqueue_trial(context.space.to_params(arch))
        trial = study.ask()
        assert trial.number == len(PEERS) + offset
        assert context.space.sample(trial) == arch
        on_epoch = _rung_callback(context, trial)
        for epoch, accuracy, stop in steps:
            decision = on_epoch(_epoch(epoch, accuracy), _costs(arch))
            assert decision is stop, f"candidate {name} at epoch {epoch}: expected stop={stop}, got {decision}"
            attrs = study.get_trials(deepcopy=False)[trial.number].user_attrs
            if epoch in (1, 3):
                assert attrs[rung_attr(epoch)] == pytest.approx([accuracy, mflops[name]]), (name, epoch)
            else:
                assert rung_attr(epoch) not in attrs, (name, epoch)
            if stop:
                assert attrs["stopped_at_rung"] == epoch, name
            else:
                assert "stopped_at_rung" not in attrs, (name, epoch)
        # tell it the way _run_trial does, so that the next candidate sees a finished trial
        if steps[-1][2]:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, [steps[-1][1], mflops[name]])
    states = [t.state for t in study.get_trials()[len(PEERS) :]]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]


# ----------------------------------------------------------------------------- 2. Ray


class FakeTrial:
    """What the scheduler reads of a Ray trial: its id and the Optuna trial number in its config."""

    def __init__(self, trial_id: str, number: int) -> None:
        self.trial_id = trial_id
        self.config = {"trial_number": number}


def test_ray_scheduler_matches_the_optuna_decisions(constructed):
    from ray.tune.schedulers import TrialScheduler

    from search.backends.ray_driver import _make_scheduler

    _, context, mflops = constructed
    scheduler = _make_scheduler(context)  # the 8 peers come from the storage
    expected_stopped = {}
    for number, (name, _, steps) in enumerate(CANDIDATES, start=8):
        # The scheduler ranks by Optuna trial number, like the Optuna backend: the candidates
        # are trials 8, 9, 10 after the peers' 0..7, the same tie-break order as there.
        trial = FakeTrial(trial_id=f"x-{name}", number=number)
        for epoch, accuracy, stop in steps:
            result = {"epoch": epoch, "accuracy": accuracy, "mflops": mflops[name], "val_accuracy": accuracy}
            decision = scheduler.on_trial_result(None, trial, result)
            expected = TrialScheduler.STOP if stop else TrialScheduler.CONTINUE
            assert decision == expected, f"candidate {name} at epoch {epoch}: expected {expected}, got {decision}"
            if stop:
                expected_stopped[trial.trial_id] = epoch
            assert scheduler.stopped == expected_stopped
    assert scheduler.stopped == {"x-B": 1, "x-C": 3}


# ----------------------------------------------------------------------------- known bugs


def test_tie_break_is_the_same_in_both_backends(tmp_path):
    """One peer (trial 0) and a new trial at rung 1, both on the front (n = 2, quota 1, both
    extremes with infinite crowding): the key decides. Both backends key results by Optuna
    trial number, so both keep the earlier trial and stop the new one."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from search.backends.ray_driver import _make_scheduler

    context = open_search(_settings(tmp_path))
    context.study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.COMPLETE, values=[0.6, 10.0], user_attrs={"status": "ok", "rung_1": [0.5, 10.0]}
        )
    )
    arch = context.space.uniform("16")
    values = (0.4, _mflops(context, "16"))  # cheaper and less accurate: both on the front
    trial = context.study.ask()
    optuna_stops = _rung_callback(context, trial)(_epoch(1, values[0]), _costs(arch))
    assert optuna_stops is True  # rank: 0 before 1 (key order)
    ray_decision = _make_scheduler(context).on_trial_result(
        None, FakeTrial(Trial.generate_id(), trial.number), {"epoch": 1, "accuracy": values[0], "mflops": values[1]}
    )
    assert (ray_decision == TrialScheduler.STOP) == optuna_stops


def test_retry_is_not_stopped_by_its_own_failed_original(tmp_path):
    """An interrupted trial is failed and queued once more (``fail_and_requeue``, also the
    heartbeat retry); the retry trains the same candidate with the same seed, so it reaches
    rung 1 with exactly the values its failed original recorded there. Failed trials are no
    peers, so the retry is not stopped by its own ghost."""
    from search.backends.study import fail_and_requeue

    context = open_search(_settings(tmp_path))
    study = context.study
    arch = context.space.uniform("8")
    study.enqueue_trial(context.space.to_params(arch))
    original = study.ask()
    context.space.sample(original)
    assert _rung_callback(context, original)(_epoch(1, 0.5), _costs(arch)) is False  # alone: continues
    fail_and_requeue(study, study.get_trials()[original.number], "interrupted")
    retry = study.ask()
    assert context.space.sample(retry) == arch and retry.user_attrs.get("retry_of") == original.number
    assert _rung_callback(context, retry)(_epoch(1, 0.5), _costs(arch)) is False  # same result: must continue too


# =============================================================================================
# 3. Samplers with PRUNED trials in the study
# =============================================================================================
N_COMPLETE, N_PRUNED, N_MORE = 21, 6, 3  # 21 complete: NSGA-II (population 20) reaches generation 1


def _proxy_objectives(space, arch) -> tuple[float, float]:
    """Cheap synthetic (accuracy, MFLOPs): more parts = fewer FLOPs and a bit less accuracy."""
    parts = [int(str(layer).rsplit(":", 1)[-1]) if ":" in str(layer) else 1 for layer in space.to_params(arch).values()]
    mflops = sum(1.0 / p for p in parts)
    return 0.5 + 0.04 * mflops, mflops


@pytest.mark.parametrize("sampler_name", ["tpe", "nsga2", "gp", "random"])
def test_samplers_work_with_pruned_trials(sampler_name):
    space = get_space("vgg_hetconv", width=0.25)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(sampler_name, 0))

    def check(trial, arch) -> None:
        params = trial.params
        assert set(params) == {slot.name for slot in space.slots}
        for name, value in params.items():
            dist = trial.distributions[name]
            assert isinstance(dist, CategoricalDistribution) and value in dist.choices, (name, value)
        assert space.from_params(params) == arch

    def attrs(prune: bool, accuracy: float, mflops: float) -> dict:
        return {
            "status": "early_stopped" if prune else "ok",
            rung_attr(1): [accuracy / 3, mflops],
            **({"stopped_at_rung": 1} if prune else {}),
        }

    def run_trial(prune: bool) -> None:
        """Ask, sample the space, tell, as the Optuna driver does (a pruned trial has no values)."""
        trial = study.ask()
        arch = space.sample(trial)
        check(trial, arch)
        accuracy, mflops = _proxy_objectives(space, arch)
        for key, value in attrs(prune, accuracy, mflops).items():
            trial.set_user_attr(key, value)
        if prune:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, [accuracy, mflops])

    def add_trial(prune: bool) -> None:
        """The same trial made with create_trial (candidates from a random sampler)."""
        asked = seed_study.ask()
        arch = space.sample(asked)
        accuracy, mflops = _proxy_objectives(space, arch)
        seed_study.tell(asked, [accuracy, mflops])
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.PRUNED if prune else TrialState.COMPLETE,
                values=None if prune else [accuracy, mflops],
                params=asked.params,
                distributions=asked.distributions,
                user_attrs=attrs(prune, accuracy, mflops),
            )
        )

    # The first trials: asked from the sampler itself (NSGA-II must see its own generation 0),
    # except for GP, whose asks take seconds each on 2 cores: made with create_trial instead.
    seed_study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    first = add_trial if sampler_name == "gp" else run_trial
    for i in range(N_COMPLETE + N_PRUNED):  # pruned: every 4th of the first 24
        first(prune=i % 4 == 3 and i < 4 * N_PRUNED)
    counts = {s: len(study.get_trials(states=(s,))) for s in (TrialState.COMPLETE, TrialState.PRUNED)}
    assert counts == {TrialState.COMPLETE: N_COMPLETE, TrialState.PRUNED: N_PRUNED}
    for i in range(N_MORE):  # the sampler keeps going with them (past its start-up trials)
        run_trial(prune=i == 1)
    assert len(study.trials) == N_COMPLETE + N_PRUNED + N_MORE
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    if sampler_name == "nsga2":  # the last trials were bred from a parent population
        generations = [t.system_attrs.get("NSGAIISampler:generation") for t in study.trials[-N_MORE:]]
        assert all(g is not None and g >= 1 for g in generations), generations


# =============================================================================================
# 4. End to end
# =============================================================================================
E2E_EPOCHS = 3  # rungs at 1 and 2 epochs below it (--min-epochs 1, --eta 2)
E2E_ARGS = [
    "--preset",
    "quick",
    "--epochs",
    str(E2E_EPOCHS),
    "--early-stop",
    "mo-asha",
    "--min-epochs",
    "1",
    "--eta",
    "2",
    "--budget",
    "6",
    "--confirm",
    "0",
    "--no-report",
    "--quiet",
]
E2E_RUNGS = (1, 2)
E2E_TIMEOUT = HANG_SECONDS  # from the module's start: only a hang (one failed at 420 s on a busy machine)


def _ray_processes(tmpdir: str) -> list[int]:
    """Pids of processes whose environment has RAY_TMPDIR=tmpdir (the Ray this module started)."""
    needle = f"RAY_TMPDIR={tmpdir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _kill_own_ray(tmpdir: str) -> None:
    deadline = time.monotonic() + 20
    while (left := _ray_processes(tmpdir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:  # one by one, by pid: only processes of the Ray this module started
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class _Search:
    """One CLI search started in the background."""

    def __init__(self, backend: str, results_dir: Path, ray_tmpdir: str | None) -> None:
        self.backend, self.results_dir = backend, results_dir
        env = ray_cli_env()
        extra = ["--threads", "1"]
        if backend == "ray":
            env = ray_cli_env(ray_tmpdir)
            extra = ["--backend", "ray", "--max-concurrent", "2"]
        self.args = [*E2E_ARGS, *extra, "--results-dir", str(results_dir)]
        self.started = time.perf_counter()
        self.proc = start_cli(self.args, ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._result: tuple[int, str, str, float] | None = None

    def result(self) -> tuple[int, str, str, float]:
        if self._result is None:
            try:
                out, err = self.proc.communicate(timeout=max(1.0, E2E_TIMEOUT - (time.perf_counter() - self.started)))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
                raise AssertionError(
                    f"{self.backend} search did not finish in {E2E_TIMEOUT}s; stderr:\n{err[-3000:]}"
                ) from None
            self._result = (self.proc.returncode, out, err, time.perf_counter() - self.started)
        return self._result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module", autouse=True)
def e2e_searches(request, tmp_path_factory):
    """Start both end-to-end searches when the module starts (only if an end-to-end test was
    selected), so that they run while the fast tests do."""
    wanted = any("end_to_end" in item.name for item in request.session.items if item.module is request.module)
    if not wanted:
        yield {}
        return
    ray_tmpdir = tempfile.mkdtemp(prefix="rtes", dir="/tmp")  # short: unix socket paths
    searches = {
        "optuna": _Search("optuna", tmp_path_factory.mktemp("e2e_optuna"), None),
        "ray": _Search("ray", tmp_path_factory.mktemp("e2e_ray"), ray_tmpdir),
    }
    try:
        yield searches
    finally:
        for search in searches.values():
            search.stop()
        _kill_own_ray(ray_tmpdir)
        shutil.rmtree(ray_tmpdir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["optuna", "ray"])
def test_end_to_end(backend, e2e_searches):
    from search.reporting.report import write_report

    search = e2e_searches[backend]
    code, _, err, seconds = search.result()
    print(f"\n[{backend}] search finished in {seconds:.0f}s")
    assert code == 0, f"{' '.join(search.args[1:])}\nexit code {code}\nstderr:\n{err[-4000:]}"
    results_dir = search.results_dir
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{results_dir / 'studies.db'}")
    trials = study.get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned, (
        f"no trial was early-stopped: {[(t.number, t.state.name, t.user_attrs.get('status')) for t in trials]}"
    )
    assert complete, "no trial trained to full fidelity"

    # budget: early-stopped trials count, and the study holds exactly the budget
    assert count_finished(study) == 6
    assert len(pruned) + len(complete) == 6 == len(trials)

    for t in pruned:
        attrs = t.user_attrs
        assert attrs["status"] == "early_stopped", t.number
        rung = attrs["stopped_at_rung"]
        assert rung in E2E_RUNGS, (t.number, rung)
        assert attrs["epochs_run"] == rung, (t.number, attrs["epochs_run"], rung)
        assert len(attrs["curve"]) == rung and [r["epoch"] for r in attrs["curve"]] == list(range(1, rung + 1))
        assert t.values is None
        for r in E2E_RUNGS:  # the rung records the trial went through (and no later ones)
            assert (rung_attr(r) in attrs) == (r <= rung), (t.number, r, sorted(attrs))
        assert attrs[rung_attr(rung)][1] == pytest.approx(attrs["mflops"])
        assert attrs[rung_attr(rung)][0] == pytest.approx(attrs["curve"][-1]["val_accuracy"])
    for t in complete:
        attrs = t.user_attrs
        assert attrs["status"] == "ok" and "stopped_at_rung" not in attrs
        assert attrs["epochs_run"] == E2E_EPOCHS and len(attrs["curve"]) == E2E_EPOCHS
        assert all(rung_attr(r) in attrs for r in E2E_RUNGS), (t.number, sorted(attrs))

    # report and export (from the storage, as `run_search.py report/export` do)
    out_dir = results_dir / STUDY
    files = write_report(study, out_dir, png=False)
    assert files.html.is_file() and files.html.stat().st_size > 10_000
    html = files.html.read_text()
    assert "early" in html.lower()
    import pandas as pd

    pareto = pd.read_csv(files.pareto_csv)
    pruned_numbers = {t.number for t in pruned}
    assert len(pareto) >= 1
    assert not set(pareto["number"]) & pruned_numbers
    assert set(pareto["state"]) == {"COMPLETE"} and set(pareto["status"]) == {"ok"}
    trials_csv = pd.read_csv(files.trials_csv)
    assert set(trials_csv.loc[trials_csv["number"].isin(pruned_numbers), "status"]) == {"early_stopped"}

    proc = run_cli(["export", "--study", STUDY, "--results-dir", str(results_dir)], ROOT)
    assert proc.returncode == 0, proc.stderr
    exported = sorted((out_dir / "pareto").glob("trial_*.json"))
    assert exported
    numbers = {json.loads(p.read_text())["trial"] for p in exported}
    assert numbers == set(pareto["number"])
    assert not numbers & pruned_numbers
    front = pareto_records(load_records(study), study_objectives(study))
    assert numbers == {r.number for r in front}
