"""``--confirm R`` end to end, through the real CLI on real SQLite studies (digits, one thread):
a confirmed front is made of means over R + 1 runs (R + 1 + K for members raced with
``--race K``; checked by brute force from the raw trials), a study that finished without confirmation is confirmed by the same command with
``--confirm`` and trains no new candidate, and a search killed with SIGKILL during
confirmation, run again, loses nothing and repeats nothing: with one worker and with two.
(The Ray backend's scenario is in test_ray_search.py, with the other Ray clusters.)

The scenarios run in background threads when the module starts; each waits once for a killed
repeat's heartbeat to go stale (30 s), which overlaps with the other.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from _studies import load
from cli_process import CliRunner, background_fixtures, run_cli
from optuna.trial import FrozenTrial, TrialState

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--preset", "quick", "--epochs", "1", "--threads", "1", "--no-baselines"]
RUN_TIMEOUT = 900  # generous: only to catch a hang on 2 shared cores
CONFIRM = 2
RACE = 1  # racing on, at its smallest: a contested member gets one run more

optuna.logging.set_verbosity(optuna.logging.ERROR)


# ------------------------------------------------------------------------------- helpers


def _running_repeat(db: Path) -> bool:
    """Whether a confirmation run is training right now (read with plain sqlite3)."""
    if not db.exists():
        return False
    try:
        connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
        try:
            rows = connection.execute(
                "SELECT t.datetime_start FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                "WHERE t.state = 'RUNNING' AND a.key = 'repeat_of'"
            ).fetchall()
        finally:
            connection.close()
    except sqlite3.OperationalError:
        return False
    # killed in the middle of its training, not just as it starts
    return any(time.time() - time.mktime(time.strptime(r[0][:19], "%Y-%m-%d %H:%M:%S")) > 1.0 for r in rows)


def _kill_during_confirmation(runner: CliRunner, args: list[Any], work: Path, d: Path) -> str:
    proc = runner.start(args, work, "confirm-killed")
    deadline = time.monotonic() + RUN_TIMEOUT
    while not _running_repeat(d / "studies.db"):
        log = proc.log[1].read_text()  # type: ignore[attr-defined]
        assert proc.poll() is None, f"the run ended before confirmation could be killed:\n{log[-3000:]}"
        assert time.monotonic() < deadline, f"no confirmation run within {RUN_TIMEOUT}s:\n{log[-3000:]}"
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return proc.log[1].read_text()  # type: ignore[attr-defined]


def _scenario(runner: CliRunner, work: Path, extra: list[Any], budget: int) -> dict[str, Any]:
    """A search that finishes without confirmation; then the same command with ``--confirm``,
    killed during confirmation; then that command again, to the end (with its report)."""
    d = work / "results"
    base = [*QUICK, *extra, "--budget", budget, "--results-dir", d]
    first = runner.run([*base, "--confirm", 0, "--no-report"], work, "unconfirmed")
    assert first.returncode == 0, first.stderr[-3000:]
    before = load(d).get_trials()
    confirm = ["--confirm", CONFIRM, "--race", RACE]
    killed_log = _kill_during_confirmation(runner, [*base, *confirm, "--no-report"], work, d)
    at_kill = load(d).get_trials()
    resumed = runner.run([*base, *confirm], work, "resumed")
    return {"dir": d, "before": before, "killed_log": killed_log, "at_kill": at_kill, "resumed": resumed}


JOBS = {
    "one_worker": lambda runner, work: _scenario(runner, work, [], 3),
    "two_workers": lambda runner, work: _scenario(runner, work, ["--workers", 2], 4),
}


runner, background, _start_background_early = background_fixtures(
    JOBS, {"test_confirmation_after_a_kill", "test_confirmed_front_is_made_of_means"}, RUN_TIMEOUT
)


def _key(trial: FrozenTrial) -> str:
    return json.dumps(
        {"architecture": trial.user_attrs["architecture"], "hp": trial.user_attrs.get("hyperparameters", {})},
        sort_keys=True,
    )


def _runs(trials: list[FrozenTrial]) -> dict[str, list[FrozenTrial]]:
    """Feasible complete runs of every configuration, by its key (brute force)."""
    runs: dict[str, list[FrozenTrial]] = {}
    for t in trials:
        if t.state == TrialState.COMPLETE and t.user_attrs.get("status") == "ok":
            runs.setdefault(_key(t), []).append(t)
    return runs


def _front_of_means(runs: dict[str, list[FrozenTrial]]) -> dict[str, tuple[float, float]]:
    means = {
        k: (statistics.fmean(t.values[0] for t in v), statistics.fmean(t.values[1] for t in v)) for k, v in runs.items()
    }
    return {
        k: (a, m)
        for k, (a, m) in means.items()
        if not any((b >= a and n <= m) and (b > a or n < m) for o, (b, n) in means.items() if o != k)
    }


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("job", list(JOBS))
def test_confirmed_front_is_made_of_means(background, job):
    """Every front member has R + 1 runs; pareto.csv's accuracies are the means of the study's
    runs of each configuration, and its members are the non-dominated means (brute force)."""
    result = background[job].result()
    assert result["resumed"].returncode == 0, result["resumed"].stderr[-4000:]
    d = result["dir"]
    trials = load(d).get_trials()
    runs = _runs(trials)
    front = _front_of_means(runs)
    assert front
    for key in front:
        assert CONFIRM + 1 <= len(runs[key]) <= CONFIRM + 1 + RACE, (key, [t.number for t in runs[key]])
    pareto = _read_csv(d / "vgg_hetconv-digits" / "pareto.csv")
    assert len(pareto) == len(front)
    by_first = {min(t.number for t in runs[key]): key for key in runs}
    for row in pareto:
        key = by_first[int(row["number"])]
        assert key in front
        assert float(row["accuracy"]) == pytest.approx(statistics.fmean(t.values[0] for t in runs[key]))
        assert int(row["runs"]) == len(runs[key])
        assert row["trials"] == " ".join(str(t.number) for t in sorted(runs[key], key=lambda t: t.number))
        assert float(row["accuracy_sd"]) == pytest.approx(statistics.stdev(t.values[0] for t in runs[key]))
    # trials.csv says which configuration every trial ran
    rows = _read_csv(d / "vgg_hetconv-digits" / "trials.csv")
    for row in rows:
        t = trials[int(row["number"])]
        if t.state == TrialState.COMPLETE and t.user_attrs.get("status") == "ok":
            assert int(row["config"]) == min(u.number for u in runs[_key(t)])
    # the exported configs carry every run
    for row in pareto:
        config = json.loads((d / "vgg_hetconv-digits" / "pareto" / f"trial_{row['number']}.json").read_text())
        key = by_first[int(row["number"])]
        assert [r["trial"] for r in config["runs"]] == sorted(t.number for t in runs[key])
        assert config["metrics"]["accuracy"] == pytest.approx(float(row["accuracy"]))
        assert {r["seed"] for r in config["runs"]} == {t.user_attrs["seed"] for t in runs[key]}
    # the end of the search says the noise, in its lines and in run.json
    stderr = result["resumed"].stderr
    assert "noise: seed-to-seed sd" in stderr and "front: " in stderr
    run = json.loads((d / "vgg_hetconv-digits" / "run.json").read_text())
    assert run["noise"]["configurations"] >= 1 and math.isfinite(run["noise"]["accuracy_sd"])
    assert "[confirm] run " in stderr


@pytest.mark.parametrize("job", list(JOBS))
def test_confirmation_after_a_kill(background, job):
    """Killed during confirmation and run again: nothing running or queued, the killed repeat
    failed and retried once, no configuration trained more than R + 1 times by confirmation,
    the budget's trials untouched and no new candidate trained (the first run had no
    --confirm: the same command with it confirms that study's front only)."""
    result = background[job].result()
    assert result["resumed"].returncode == 0, result["resumed"].stderr[-4000:]
    before = {t.number: t for t in result["before"]}
    trials = load(result["dir"]).get_trials()
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not any("repeat_of" in t.user_attrs for t in before.values())
    for number, old in before.items():  # the budget's trials are unchanged
        new = trials[number]
        assert (new.state, new.values, new.params) == (old.state, old.values, old.params)
    later = [t for t in trials if t.number not in before]
    assert later and all("repeat_of" in t.user_attrs for t in later), "confirmation trained a new candidate"
    killed = [t for t in result["at_kill"] if t.state == TrialState.RUNNING and "repeat_of" in t.user_attrs]
    assert killed, "the kill found no running repeat"
    for trial in killed:
        assert trials[trial.number].state == TrialState.FAIL
        retries = [
            t
            for t in trials
            if t.system_attrs.get("failed_trial") == trial.number or t.user_attrs.get("retry_of") == trial.number
        ]
        assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE, [(t.number, t.state) for t in retries]
        assert retries[0].user_attrs["repeat_of"] == trial.user_attrs["repeat_of"]
    repeats: dict[int, int] = {}
    for t in trials:
        if "repeat_of" in t.user_attrs and t.state == TrialState.COMPLETE:
            repeats[t.user_attrs["repeat_of"]] = repeats.get(t.user_attrs["repeat_of"], 0) + 1
    assert repeats and max(repeats.values()) <= CONFIRM + RACE, repeats
    seeds = [t.user_attrs["seed"] for t in trials if t.state == TrialState.COMPLETE]
    assert len(seeds) == len(set(seeds)), "every run of a configuration has a seed of its own"


BAD = [("--confirm", bad) for bad in ["-1", "nan", "11", "abc", "1e3", "2.5", "100000000000000000000"]]
BAD += [("--race", bad) for bad in ["-1", "21", "inf", "x"]]


@pytest.mark.parametrize("option,bad", BAD)
def test_bad_confirm_is_one_line_and_exit_2(tmp_path, option, bad):
    proc = run_cli([*QUICK, "--budget", "1", option, bad, "--results-dir", tmp_path / "r"], tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "r").exists()
