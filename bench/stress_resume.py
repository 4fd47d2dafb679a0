"""Stress test of kill and resume: several workers on one study, killed with SIGKILL at random
moments and restarted, a bounded number of times; the study must end with exactly the budget
of finished trials, nothing lost, nothing repeated, nothing left running.

    python bench/stress_resume.py --workers 2 --budget 12 --kills 3 --out results/bench/stress.json

Each round starts ``run_search.py --workers N`` in its own process group and kills the whole
group after a random delay; the last round runs to the end. Kills and restarts are bounded
(``--kills``), and every run has a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budget", type=int, default=12)
    parser.add_argument("--kills", type=int, default=3, help="how many times the workers are killed")
    parser.add_argument("--min-delay", type=float, default=8.0, help="seconds before a kill, at least")
    parser.add_argument("--max-delay", type=float, default=25.0, help="seconds before a kill, at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the summary as JSON here")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    results = Path(tempfile.mkdtemp(prefix="stress-"))
    command = [
        sys.executable,
        str(ROOT / "run_search.py"),
        "--preset",
        "quick",
        "--epochs",
        "2",
        "--early-stop",
        "none",
        "--threads",
        "1",
        "--budget",
        str(args.budget),
        "--workers",
        str(args.workers),
        "--no-report",
        "--quiet",
        "--results-dir",
        str(results),
    ]
    rounds = []
    for kill in range(args.kills + 1):
        started = time.monotonic()
        proc = subprocess.Popen(
            command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        if kill < args.kills:
            delay = rng.uniform(args.min_delay, args.max_delay)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rounds.append({"round": kill, "killed_after_s": round(delay, 1), "exit": proc.returncode})
        else:
            try:
                _, stderr = proc.communicate(timeout=1800)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                raise
            rounds.append(
                {
                    "round": kill,
                    "ran_to_end_s": round(time.monotonic() - started, 1),
                    "exit": proc.returncode,
                    "stderr_tail": stderr[-500:],
                }
            )

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="vgg_hetconv-digits", storage=f"sqlite:///{results / 'studies.db'}")
    trials = study.get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    states = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    seeds = [t.user_attrs.get("seed") for t in complete]
    summary = {
        "workers": args.workers,
        "budget": args.budget,
        "kills": args.kills,
        "rounds": rounds,
        "trials": len(trials),
        "states": {k: v for k, v in states.items() if v},
        "complete_ok": sum(t.user_attrs.get("status") == "ok" for t in complete),
        "distinct_seeds_of_complete": len(set(seeds)),
        "retries": sum(("retry_of" in t.user_attrs) or ("failed_trial" in t.system_attrs) for t in trials),
        "exactly_budget": len(complete) == args.budget and len(set(seeds)) == args.budget,
        "nothing_running": states["RUNNING"] == 0 and states["WAITING"] == 0,
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return 0 if summary["exactly_budget"] and summary["nothing_running"] and rounds[-1]["exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
