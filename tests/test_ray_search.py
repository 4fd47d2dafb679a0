"""The Ray Tune backend (search/backends/ray_driver.py) end to end, on this CPU-only machine.

1. a local run through the CLI writes the same study as the Optuna backend, and re-running
   with a larger budget continues it;
2. a two-node cluster on loopback (``ray.cluster_utils.Cluster``), which passes the check of
   ``--address`` and is joined as the driver joins one, spreads trials over both nodes;
3. logical GPUs with fractional shares: trials pack two per GPU id and run concurrently;
4. a driver killed with SIGKILL (with its local Ray) is resumed by running the same command.

Every Ray instance of a test gets its own short ``RAY_TMPDIR``: session files, sockets and
the "current cluster" address file stay private (a concurrent ``ray.init()`` elsewhere on the
machine cannot join a cluster of these tests, nor these tests another one), and every process
a test's Ray starts carries that value in its environment, which is how the teardown finds
(and, if any survived, kills) exactly the processes of that test and nothing else.

Sizes are minimal (``--preset quick --epochs 1``: digits, width 0.25); the whole file takes a
few minutes on 2 CPU cores. Timings are printed (run with ``-s``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from cli_process import HANG_SECONDS, ray_cli_env, run_cli, start_cli
from optuna.trial import FrozenTrial, TrialState

from search.settings import PRESETS, Settings, TrainingSettings

ROOT = Path(__file__).resolve().parent.parent
STUDY = "vgg_hetconv-digits"
QUICK = ["--preset", "quick", "--epochs", "1", "--no-report", "--confirm", "0"]
# Quiet Ray settings for the Ray instances the tests start in-process (the CLI sets its own).
IN_PROCESS_RAY_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_worker_niceness": "0",  # as the CLI's: a niced trial crawls beside a busy process
}
# Trial attributes that both backends write (search/evaluation/evaluate.py result_attributes).
SHARED_TRIAL_ATTRS = {
    "architecture",
    "mflops",
    "mflops_all_ops",
    "params",
    "curve",
    "status",
    "seed",
    "device",
    "epochs_run",
}
RAY_TRIAL_ATTRS = {"ray_node_id", "ray_gpu_ids"}

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]


def say(text: str) -> None:
    print(f"\n[test_ray_search] {text}", flush=True)


# ----------------------------------------------------------------------------- processes


def _ray_processes(tmpdir: str) -> list[dict]:
    """Processes whose environment has RAY_TMPDIR=tmpdir (every process of that test's Ray)."""
    needle = f"RAY_TMPDIR={tmpdir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            pid = int(entry.name)
            found.append({"pid": pid, "pgid": os.getpgid(pid), "sid": os.getsid(pid), "cmd": cmd[:90]})
        except (OSError, ProcessLookupError):
            continue  # gone meanwhile, or a kernel thread
    return found


def _wait_gone(tmpdir: str, seconds: float) -> list[dict]:
    deadline = time.monotonic() + seconds
    while True:
        left = _ray_processes(tmpdir)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def _kill_leftovers(tmpdir: str, what: str) -> list[dict]:
    """Kill (one by one, by pid) processes of this test's Ray that outlived it; return them."""
    left = _wait_gone(tmpdir, 20)
    if left:
        say(f"{what}: {len(left)} process(es) of this test's Ray still alive, killing them: {left}")
        for proc in left:
            try:
                os.kill(proc["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        _wait_gone(tmpdir, 10)
    return left


@pytest.fixture
def ray_tmpdir(monkeypatch: pytest.MonkeyPatch):
    """A private, short RAY_TMPDIR (unix socket paths must stay under 107 characters)."""
    path = tempfile.mkdtemp(prefix="rtt", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield path
    _kill_leftovers(path, "teardown")
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def in_process_ray(ray_tmpdir: str, monkeypatch: pytest.MonkeyPatch):
    """Quiet environment for a Ray started by the test itself; always shuts Ray down."""
    import ray

    for key, value in IN_PROCESS_RAY_ENV.items():
        monkeypatch.setenv(key, value)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert not ray.is_initialized()
    yield ray_tmpdir
    ray.shutdown()
    optuna.logging.set_verbosity(level)


def _run_cli(
    args: list[str], ray_tmpdir: str, timeout: float = HANG_SECONDS
) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    proc = run_cli(args, ROOT, timeout=timeout, env=ray_cli_env(ray_tmpdir))
    return proc, time.perf_counter() - started


# ----------------------------------------------------------------------------- studies


def _load(results_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{results_dir / 'studies.db'}")


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _seconds(trial: FrozenTrial) -> float:
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def _overhead(trials: list[FrozenTrial]) -> float:
    """Mean seconds a trial spent (ask to tell) outside its own training."""
    return sum(_seconds(t) - t.user_attrs["train_seconds"] for t in trials) / len(trials)


def _arch(trial: FrozenTrial) -> str:
    return json.dumps(trial.user_attrs["architecture"], sort_keys=True)


def _max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """Most intervals open at one instant (a finish at t is before a start at t)."""
    events = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals], key=lambda e: (e[0], e[1])
    )
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def _quick_settings(results_dir: Path, **changes) -> Settings:
    """What ``--preset quick --epochs 1 --backend ray`` gives (run_search.settings_from_args)."""
    quick = dict(PRESETS["quick"])
    width = quick.pop("width")
    training = TrainingSettings(**{**quick, "epochs": changes.pop("epochs", 1)})
    changes = {"confirm": 0, **changes}  # these tests count the budget's trials
    return Settings(
        width=width,
        training=training,
        backend="ray",
        results_dir=str(results_dir),
        preset="quick",
        quiet=True,
        **changes,
    )


def _check_ray_trial(trial: FrozenTrial, epochs: int) -> None:
    attrs = trial.user_attrs
    assert SHARED_TRIAL_ATTRS | RAY_TRIAL_ATTRS <= set(attrs), trial.number
    assert attrs["status"] == "ok"
    # seed 0: trial_seed = number; a retry keeps its original's seed
    assert attrs["seed"] == attrs.get("retry_of", trial.number)
    assert attrs["device"] == "cpu"  # torch sees no CUDA on this machine
    assert attrs["epochs_run"] == epochs and len(attrs["curve"]) == epochs
    arch = attrs["architecture"]
    assert arch["model"] == "vgg16" and arch["width"] == 0.25 and len(arch["layers"]) == 12, arch
    assert re.fullmatch(r"[0-9a-f]{56}", attrs["ray_node_id"]), attrs["ray_node_id"]
    assert trial.values[1] == pytest.approx(attrs["mflops"])  # objectives: accuracy, mflops
    assert 0.0 <= trial.values[0] <= 1.0


# ----------------------------------------------------------------------------- 1. local CLI


def test_cli_local_run_writes_the_optuna_backend_study_and_continues(tmp_path: Path, ray_tmpdir: str) -> None:
    ray_dir, optuna_dir = tmp_path / "ray", tmp_path / "optuna"
    ray_run, ray_wall = _run_cli(
        [*QUICK, "--budget", "3", "--backend", "ray", "--max-concurrent", "2", "--results-dir", str(ray_dir)],
        ray_tmpdir,
    )
    assert ray_run.returncode == 0, ray_run.stderr[-4000:]
    # The same command on the Optuna backend. --threads 1: a Ray trial with one CPU trains
    # with one torch thread (Ray sets OMP_NUM_THREADS=1), so both compute exactly the same.
    optuna_run, optuna_wall = _run_cli(
        [*QUICK, "--budget", "3", "--threads", "1", "--results-dir", str(optuna_dir)], ray_tmpdir
    )
    assert optuna_run.returncode == 0, optuna_run.stderr[-4000:]

    study, reference = _load(ray_dir), _load(optuna_dir)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3 and len(_complete(study)) == 3, [(t.number, t.state) for t in trials]
    # Study: same attributes, objectives, reference point, protocol, space, metric names.
    assert set(study.user_attrs) == set(reference.user_attrs)
    for key in ("objectives", "reference_point", "protocol", "space", "dataset", "dense_cost"):
        assert study.user_attrs[key] == reference.user_attrs[key], key
    assert study.metric_names == reference.metric_names == ["accuracy", "mflops"]
    assert study.directions == reference.directions
    # Trials: the Optuna backend's attributes plus only ray_* ones.
    optuna_keys = set(reference.trials[0].user_attrs)
    assert SHARED_TRIAL_ATTRS <= optuna_keys
    for trial in trials:
        _check_ray_trial(trial, epochs=1)
        assert set(trial.user_attrs) - optuna_keys == RAY_TRIAL_ATTRS
        assert optuna_keys <= set(trial.user_attrs)
        assert trial.user_attrs["ray_gpu_ids"] == []  # the local Ray of a GPU-less box has none
    assert len({t.user_attrs["ray_node_id"] for t in trials}) == 1  # one local node
    # Same seed, same sampler: the same candidates, and the same results, on both backends.
    for mine, theirs in zip(trials, sorted(reference.trials, key=lambda t: t.number)):
        assert mine.params == theirs.params, mine.number
        assert mine.user_attrs["architecture"] == theirs.user_attrs["architecture"]
        assert mine.values == pytest.approx(theirs.values, rel=1e-6), mine.number

    ray_results = ray_dir / STUDY / "ray"
    assert ray_results.is_dir()
    experiments = sorted(p.name for p in ray_results.iterdir() if p.is_dir())
    assert len(experiments) == 1 and experiments[0].startswith(f"{STUDY}-"), experiments
    assert json.loads((ray_dir / STUDY / "run.json").read_text())["backend"] == "ray"

    intervals = [(t.datetime_start, t.datetime_complete) for t in trials]
    ray_trials, optuna_trials = trials, _complete(reference)
    say(
        f"budget 3, --epochs 1: ray CLI {ray_wall:.1f} s wall (max-concurrent 2, {_max_overlap(intervals)} at once), "
        f"optuna CLI {optuna_wall:.1f} s wall (sequential, --threads 1)"
    )
    say(
        "per trial, ask..tell minus training: ray "
        + ", ".join(f"#{t.number} {_seconds(t):.1f}-{t.user_attrs['train_seconds']:.1f}s" for t in ray_trials)
        + f" (mean overhead {_overhead(ray_trials):.1f} s); optuna mean overhead {_overhead(optuna_trials):.2f} s "
        f"(trial time {', '.join(f'{_seconds(t):.1f}s' for t in optuna_trials)})"
    )

    # Continue: --budget 4 adds exactly one trial and leaves the others alone.
    before = {t.number: (t.params, t.values, t.user_attrs, t.datetime_complete) for t in trials}
    again, again_wall = _run_cli(
        [*QUICK, "--budget", "4", "--backend", "ray", "--max-concurrent", "2", "--results-dir", str(ray_dir)],
        ray_tmpdir,
    )
    assert again.returncode == 0, again.stderr[-4000:]
    assert "3/4 finished trials" in again.stderr
    study = _load(ray_dir)
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials), [(t.number, t.state) for t in trials]
    for trial in trials[:3]:
        assert (trial.params, trial.values, trial.user_attrs, trial.datetime_complete) == before[trial.number]
    _check_ray_trial(trials[3], epochs=1)
    assert _arch(trials[3]) not in {_arch(t) for t in trials[:3]}
    assert len([p for p in ray_results.iterdir() if p.is_dir()]) == 2  # one Ray experiment per run
    say(f"re-run with --budget 4 (one more trial): {again_wall:.1f} s wall")


# ----------------------------------------------------------------------------- 2. two nodes


@pytest.fixture
def two_node_cluster(in_process_ray: str):
    import ray
    from ray.cluster_utils import Cluster

    from search.backends.ray_cluster import check_ray_address, join_ray_cluster

    started = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        # A real Ray head passes the check of --address, and the driver's bounded join takes it.
        check_ray_address(cluster.address)
        join_ray_cluster(cluster.address, log_to_driver=False, logging_level=logging.WARNING)
        assert ray.is_initialized()
        say(f"2-node Cluster up and the driver joined in {time.perf_counter() - started:.1f} s")
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path: Path, two_node_cluster) -> None:
    import ray

    from search.backends.ray_driver import run_ray_search

    node_ids = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert len(node_ids) == 2
    started = time.perf_counter()
    study = run_ray_search(_quick_settings(tmp_path, budget=4, max_concurrent=2, cpus_per_trial=1.0))
    wall = time.perf_counter() - started
    assert ray.is_initialized()  # a Ray it did not start is left connected

    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4 and len(_complete(study)) == 4, [(t.number, t.state) for t in trials]
    for trial in trials:
        _check_ray_trial(trial, epochs=1)
        assert trial.user_attrs["ray_gpu_ids"] == []
    used = [t.user_attrs["ray_node_id"] for t in trials]
    assert set(used) == node_ids, used
    say(
        f"2 nodes x 1 CPU, budget 4, 2 at once: {wall:.1f} s; trials per node {sorted(used.count(n) for n in node_ids)}"
    )


# ----------------------------------------------------------------------------- 3. logical GPUs


@pytest.fixture
def ray_with_logical_gpus(in_process_ray: str):
    import ray

    started = time.perf_counter()
    # Logical GPUs: Ray only counts and hands out the ids "0" and "1" (CUDA_VISIBLE_DEVICES);
    # this machine has no GPU, and torch in the trials sees no CUDA.
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    say(f"ray.init(num_cpus=4, num_gpus=2) in {time.perf_counter() - started:.1f} s")
    try:
        yield
    finally:
        ray.shutdown()


def test_fractional_logical_gpus_pack_two_trials_per_gpu(tmp_path: Path, ray_with_logical_gpus) -> None:
    import ray

    from search.backends.ray_driver import run_ray_search

    settings = _quick_settings(
        tmp_path, epochs=2, budget=4, max_concurrent=4, gpus_per_trial=0.5, cpus_per_trial=0.5, early_stop="none"
    )  # every trial trains to the end: 4 complete
    started = time.perf_counter()
    study = run_ray_search(settings)
    wall = time.perf_counter() - started
    assert ray.is_initialized()

    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4 and len(_complete(study)) == 4, [(t.number, t.state) for t in trials]
    by_gpu: dict[str, list[tuple[datetime, datetime]]] = {}
    for trial in trials:
        # The GPU shares are logical: Ray gave each trial a GPU id, torch still trains on the CPU.
        _check_ray_trial(trial, epochs=2)
        gpu_ids = trial.user_attrs["ray_gpu_ids"]
        assert len(gpu_ids) == 1 and gpu_ids[0] in {"0", "1"}, gpu_ids
        by_gpu.setdefault(gpu_ids[0], []).append((trial.datetime_start, trial.datetime_complete))
    assert set(by_gpu) == {"0", "1"}, by_gpu
    # Optuna's ask..tell interval of a trial contains its run on Ray, so these are upper bounds.
    intervals = [(t.datetime_start, t.datetime_complete) for t in trials]
    at_once = _max_overlap(intervals)
    assert at_once >= 2, intervals
    per_gpu = {gpu: _max_overlap(spans) for gpu, spans in by_gpu.items()}
    assert all(n <= 2 for n in per_gpu.values()), per_gpu
    say(
        f"4 trials, 0.5 GPU + 0.5 CPU each, epochs 2: {wall:.1f} s; at most {at_once} trials at once; "
        f"per GPU id at once {per_gpu}; trial times {[round(_seconds(t), 1) for t in trials]}"
    )


# ----------------------------------------------------------------------------- 4. kill and resume


def test_killed_driver_is_resumed_by_the_same_command(tmp_path: Path, ray_tmpdir: str) -> None:
    results = tmp_path / "res"
    args = [
        "--preset",
        "quick",
        "--epochs",
        "1",
        "--early-stop",
        "none",
        "--no-report",
        "--budget",
        "4",
        "--confirm",
        "0",
        "--backend",
        "ray",
        "--max-concurrent",
        "1",
        "--results-dir",
        str(results),
    ]
    log_path = tmp_path / "first_run.log"
    with open(log_path, "w") as log:
        proc = start_cli(
            args, ROOT, env=ray_cli_env(ray_tmpdir), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        started = time.perf_counter()
        # The study exists once the driver says where Ray writes (printed after ray.init).
        deadline = time.monotonic() + HANG_SECONDS
        while "Ray results in" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        study = _load(results)
        complete_seen = None
        while True:
            assert proc.poll() is None, "the first run ended before it was killed:\n" + log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            states = [t.state for t in study.get_trials(deepcopy=False)]
            if TrialState.COMPLETE in states:
                complete_seen = complete_seen or time.monotonic()
                # Prefer killing while the next trial runs (up to 15 s after the first finished).
                if TrialState.RUNNING in states or time.monotonic() - complete_seen > 15:
                    break
            time.sleep(0.3)
        group = _ray_processes(ray_tmpdir)
        os.killpg(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(timeout=30)
        killed_after = time.perf_counter() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # The local Ray's daemons (gcs_server, raylet, ...) are in the driver's process group; its
    # workers put themselves in process groups of their own (same session) and must exit by
    # themselves once their raylet is gone. Anything still alive after 20 s is killed here,
    # by pid (it carries this test's private RAY_TMPDIR), and reported.
    outside = [p for p in group if p["pgid"] != proc.pid]
    lingering = _wait_gone(ray_tmpdir, 20)
    gone_after = time.monotonic() - killed_at
    survivors = _kill_leftovers(ray_tmpdir, "after killing the first run's process group")
    say(
        f"killed the first run (pid/pgid/sid {proc.pid}) after {killed_after:.1f} s: {len(group)} processes carried "
        f"its RAY_TMPDIR, {len(outside)} in other process groups (same session): {outside}; "
        + (
            f"{len(lingering)} still alive 20 s later: {lingering}"
            if lingering
            else f"all gone {gone_after:.1f} s after the kill"
        )
        + f"; killed by the test: {len(survivors)}"
    )

    before = {t.number: t for t in _load(results).get_trials()}
    complete_before = {n: t for n, t in before.items() if t.state == TrialState.COMPLETE}
    running_before = sorted(n for n, t in before.items() if t.state == TrialState.RUNNING)
    assert complete_before
    say(f"at the kill: trials {sorted(before)}: complete {sorted(complete_before)}, running {running_before}")

    second, second_wall = _run_cli(args, ray_tmpdir)
    assert second.returncode == 0, second.stderr[-4000:]
    if running_before:
        assert (
            f"{len(running_before)} trial(s) left running by a stopped driver were failed and queued again"
            in second.stderr
        )
    study = _load(results)
    trials = study.get_trials(deepcopy=False)
    complete = _complete(study)
    assert len(complete) == 4, [(t.number, t.state) for t in trials]
    assert all(t.user_attrs["status"] == "ok" for t in complete)
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # The trials left running by the dead driver failed, with a reason, and ran again once.
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert sorted(t.number for t in failed) == running_before
    layers = {f"conv{i:02d}" for i in range(2, 14)}
    for trial in failed:
        assert trial.user_attrs.get("fail_reason"), trial.number
        retries = [t for t in trials if t.user_attrs.get("retry_of") == trial.number]
        if not layers <= set(trial.params):  # killed while its candidate was being sampled
            assert retries == [], "a half-sampled trial has no configuration to repeat"
            continue
        assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE, retries
        assert retries[0].params == trial.params
    # Finished trials before the kill are unchanged; no finished trial ran twice.
    for number, old in complete_before.items():
        new = study.trials[number]
        assert (new.state, new.values, new.params, new.user_attrs) == (
            old.state,
            old.values,
            old.params,
            old.user_attrs,
        )
    for trial in complete:
        _check_ray_trial(trial, epochs=1)
    assert len({t.number for t in complete}) == len({t.user_attrs["seed"] for t in complete}) == 4
    assert len({_arch(t) for t in complete}) == 4
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == 4
    assert not _wait_gone(ray_tmpdir, 20), "the second run left its Ray running"
    say(
        f"resumed run: {second_wall:.1f} s; final trials "
        + ", ".join(
            f"#{t.number} {t.state.name}{' retry_of ' + str(t.user_attrs['retry_of']) if 'retry_of' in t.user_attrs else ''}"
            for t in trials
        )
    )


# ----------------------------------------------------------------------------- 5. --confirm on Ray


def test_confirmation_on_ray_survives_a_killed_driver(tmp_path: Path, ray_tmpdir: str) -> None:
    """A study that finished without confirmation (on the Optuna backend: the backends share
    studies, and one Ray start less keeps the suite short), then the Ray command with
    --confirm 1, killed (driver and its local Ray) while a repeat trains, then run again: every
    front member ends with 2 runs, no new candidate is trained, nothing is left running or
    queued, no configuration is repeated twice by confirmation."""
    results = tmp_path / "res"
    unconfirmed = [*QUICK, "--threads", "1", "--no-baselines", "--budget", "2", "--results-dir", str(results)]
    base = [*unconfirmed, "--backend", "ray", "--max-concurrent", "1", "--race", "0"]  # each repeated once
    first, _ = _run_cli([*unconfirmed, "--confirm", "0"], ray_tmpdir, timeout=600)
    assert first.returncode == 0, first.stderr[-4000:]
    budget_trials = {t.number: t for t in _load(results).get_trials()}
    log_path = tmp_path / "confirm.log"
    with open(log_path, "w") as log:
        proc = start_cli(
            [*base, "--confirm", "1"],
            ROOT,
            env=ray_cli_env(ray_tmpdir),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 600
        study = _load(results)
        while True:
            assert proc.poll() is None, "the run ended before it was killed:\n" + log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            running = [
                t
                for t in study.get_trials(deepcopy=False)
                if t.state == TrialState.RUNNING and "repeat_of" in t.user_attrs
            ]
            if running:
                break
            time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _wait_gone(ray_tmpdir, 20)
    _kill_leftovers(ray_tmpdir, "after killing the confirming driver")
    killed = [t.number for t in _load(results).get_trials() if t.state == TrialState.RUNNING]
    second, _ = _run_cli([*base, "--confirm", "1"], ray_tmpdir, timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    trials = _load(results).get_trials()
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert all("repeat_of" in t.user_attrs for t in trials if t.number not in budget_trials), "a new candidate ran"
    assert killed and all(trials[n].state == TrialState.FAIL for n in killed)
    runs: dict[str, list[FrozenTrial]] = {}
    for t in _complete(_load(results)):
        runs.setdefault(_arch(t), []).append(t)
    means = {k: (sum(t.values[0] for t in v) / len(v), v[0].values[1]) for k, v in runs.items()}
    front = [
        k
        for k, (a, m) in means.items()
        if not any((b >= a and n <= m) and (b > a or n < m) for o, (b, n) in means.items() if o != k)
    ]
    assert front and all(len(runs[k]) >= 2 for k in front), {k[:40]: len(v) for k, v in runs.items()}
    repeated = [t.user_attrs["repeat_of"] for t in _complete(_load(results)) if "repeat_of" in t.user_attrs]
    assert len(repeated) == len(set(repeated)), f"a configuration was repeated twice: {repeated}"
    assert "[confirm] run " in second.stderr
    assert not _wait_gone(ray_tmpdir, 60), "the second run left its Ray running"
