#!/usr/bin/env python
"""Does a confirmed front survive a retrain? The winner's curse of single-run and confirmed fronts.

For every task and search seed, two searches with the same space, sampler, seed and recipe, in
a fresh storage, at **equal total training epochs**:

- ``confirmed``: ``--budget B --confirm R``: the front of means, every member with R + 1 runs;
- ``single``: ``--confirm 0`` with as many trials as the confirmed search trained in all
  (budget plus confirmation runs): a front of single runs. Its first B trials are the confirmed
  search's (copied: the same sampler with the same seed and history proposes, and the same
  trial seeds train, the same candidates), so the two spend the same epochs differently after
  the budget: on confirming the front, or on more candidates.
- with ``--race K`` (the tool's default, 3), the same pair again with racing: ``confirmed-raceK``
  is the confirmed search continued with ``--race K`` (its unresolved members raced to up to
  R + 1 + K runs: what the same command with ``--race`` does to a finished study, and what a
  search with ``--race K`` from the start does after its R + 1 runs), and ``single-raceK`` the
  single-run search continued to as many trials as that trained in all.

Then every configuration on either front is trained ``--fresh`` more times with new seeds
under the same protocol (validation split, same recipe), and for each front:

- the **winner's curse** of a member: its recorded accuracy (the mean of its runs in the
  study) minus the mean of its fresh runs; the front's curse is the average over its members
  other than the cheapest (which is on the front by its cost, not by its accuracy);
- the **fresh sd**: the pooled sd of the fresh runs of its members (one run's noise);
- the **hypervolume on the fresh runs**: of the members' fresh means (accuracy 0 and the dense
  model's MFLOPs as the reference point, as in the report).

Rows (one per front member) go to ``--out`` (CSV), a summary per (task, seed, front) to the
``.summary.csv`` beside it, the seeds pooled per (task, front) to the ``.pooled.csv``
(``--pool-only`` recomputes it from the rows, e.g. after seeds run in separate processes were
appended to one file), and tables are printed.

    python bench/confirmation.py --tasks digits:vgg_hetconv --seeds 2 --budget 50 --epochs 5
    python bench/confirmation.py --tasks digits32:vgg_flgc --seeds 2 --budget 16 --epochs 4
    python bench/confirmation.py --tasks digits:vgg_hetconv --seeds 1 --budget 6 --epochs 1 --fresh 2  # smoke test

With ``--work-dir`` the studies and fresh retrainings are kept there, and the same command run
again continues where it stopped (a search continues its study; fresh runs already done are
not repeated).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROW_COLUMNS = (
    "task",
    "seed",
    "front",
    "config",
    "mflops",
    "cheapest",
    "recorded_accuracy",
    "recorded_runs",
    "fresh_mean",
    "fresh_sd",
    "curse",
    "fresh_accuracies",
)
SUMMARY_COLUMNS = (
    "task",
    "seed",
    "front",
    "budget",
    "trainings",
    "epochs",
    "members",
    "curse_mean",
    "fresh_sd",
    "curse_in_fresh_sd",
    "hv_recorded",
    "hv_fresh",
    "study_noise_sd",
    "seconds",
)
POOLED_COLUMNS = (
    "task",
    "front",
    "seeds",
    "members",
    "curse_mean",
    "fresh_sd",
    "curse_in_fresh_sd",
    "hv_recorded_mean",
    "hv_fresh_mean",
    "epochs_per_seed",
)
# Fresh retrainings use seeds no trial of a search uses (trial seeds are seed * 100003 + number).
FRESH_SEED_BASE = 1_500_000_000


@dataclass
class Front:
    """One search's front and what its fresh retrainings measured."""

    task: str
    seed: int
    kind: str  # "single" or "confirmed", "-race<K>" appended for the pair with --race K
    budget: int
    trainings: int  # trials trained to the end (budget trials and confirmation runs)
    epochs: int
    members: list[Any]  # Configurations, cheapest first
    reference: dict[str, float]
    noise_sd: float | None
    seconds: float
    study: Any
    fresh: dict[str, list[float]] = field(default_factory=dict)  # config key -> fresh accuracies


def settings_for(args: argparse.Namespace, task: str, seed: int, budget: int, confirm: int, race: int, results: Path):
    """The search of one task: the quick preset's recipe on the task's data set."""
    from bench._recipe import quick_training
    from search.settings import Settings

    dataset, space = task.split(":")
    training = quick_training(dataset, args.data_dir, args.epochs, args.threads)
    return Settings(
        space=space,
        budget=budget,
        width=args.width,
        training=training,
        seed=seed,
        results_dir=str(results),
        confirm=confirm,
        race=race,
        study_name=f"{dataset}-{space}-{seed}-confirm{confirm}{_race_label(race)}-b{budget}",
        quiet=True,
    )


def _race_label(race: int) -> str:
    return f"-race{race}" if race else ""


def run_search(settings, start_from=None, whole: bool = False) -> tuple[Any, float]:
    """Run (or continue) the search of ``settings``; ``start_from``: a study whose trials before
    its first confirmation run (``whole``: all its trials) a new study starts with. Returns the
    study and the seconds its trials trained."""
    from search.backends.study import open_search
    from search.commands import search
    from search.storage import find_study, open_storage

    if start_from is not None and find_study(open_storage(settings.storage_url), settings.study) is None:
        _copy_trials(start_from, open_search(settings, heartbeat=False).study, whole)
    search(settings, write_report=False)
    study = find_study(open_storage(settings.storage_url), settings.study)
    assert study is not None
    seconds = sum(float(t.user_attrs.get("train_seconds") or 0.0) for t in study.get_trials(deepcopy=False))
    return study, seconds


def _copy_trials(source, target, whole: bool) -> None:
    """The trials ``source`` ran before confirmation began (``whole``: all of them), into the
    new study ``target``, with the same numbers (so trial seeds match)."""
    import optuna

    trials = source.get_trials(deepcopy=False)
    end = len(trials)
    if not whole:
        end = min((t.number for t in trials if "repeat_of" in t.user_attrs), default=end)
    for t in trials[:end]:
        if t.state.is_finished():
            copy = optuna.trial.create_trial(
                state=t.state,
                values=t.values,
                params=t.params,
                distributions=t.distributions,
                user_attrs=t.user_attrs,
                system_attrs={k: v for k, v in t.system_attrs.items() if k != "fixed_params"},
            )
            copy.datetime_start, copy.datetime_complete = t.datetime_start, t.datetime_complete
            target.add_trial(copy)


def front_of(study, task: str, seed: int, kind: str, budget: int, seconds: float) -> Front:
    from search.reporting.configurations import group_configurations, measure_noise
    from search.reporting.front import pareto_configurations
    from search.storage import load_records, study_objectives

    records = load_records(study)
    objectives = study_objectives(study)
    members = sorted(pareto_configurations(records, objectives), key=lambda c: (c.mflops, c.number))
    trainings = sum(1 for r in records if r.feasible_complete)
    epochs = sum(int(r.epochs_run or 0) for r in records if r.state in ("COMPLETE", "PRUNED"))
    reference = {k: float(v) for k, v in study.user_attrs["reference_point"].items() if isinstance(v, (int, float))}
    noise = measure_noise(group_configurations(records, objectives))
    return Front(task, seed, kind, budget, trainings, epochs, members, reference, noise.sd, seconds, study)


def retrain_fresh(fronts: list[Front], count: int, cache: Path) -> None:
    """Train every configuration of the fronts ``count`` times with new seeds (once per
    configuration, shared by the fronts that hold it; kept in ``cache``, a JSON file, so that a
    rerun trains only what is missing)."""
    import json

    from models import Architecture
    from search.evaluation.evaluate import evaluate
    from search.reporting.configurations import config_key
    from search.settings import TrainingSettings

    training = TrainingSettings.from_json(fronts[0].study.user_attrs["training"])
    done: dict[str, list[float]] = json.loads(cache.read_text()) if cache.is_file() else {}
    configs = {config_key(c.record): c for front in fronts for c in front.members}
    for key, config in sorted(configs.items(), key=lambda kv: kv[0] or ""):
        assert key is not None
        arch = Architecture.from_json(config.record.user_attrs["architecture"])
        recipe = training.replace(**config.record.hyperparameters)
        runs = done.setdefault(key, [])
        index = sorted(configs).index(key)
        while len(runs) < count:
            runs.append(
                evaluate(arch, recipe, FRESH_SEED_BASE + 1000 * (fronts[0].seed * 100 + index) + len(runs)).accuracy
            )
            cache.write_text(json.dumps(done))
        kinds = "/".join(f.kind for f in fronts if config in f.members)
        print(f"  fresh {kinds} #{config.number}: {' '.join(f'{a:.4f}' for a in done[key])}", flush=True)
    for front in fronts:
        front.fresh = {config_key(c.record): done[config_key(c.record)] for c in front.members}


def _pooled_sd(groups: list[list[float]]) -> float | None:
    squares = freedom = 0.0
    for values in groups:
        if len(values) >= 2:
            mean = statistics.fmean(values)
            squares += sum((v - mean) ** 2 for v in values)
            freedom += len(values) - 1
    return math.sqrt(squares / freedom) if freedom else None


def rows_and_summary(front: Front) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from search.reporting.configurations import config_key
    from search.reporting.pareto import hypervolume

    rows, curses = [], []
    recorded_points, fresh_points = [], []
    for i, c in enumerate(front.members):
        fresh = front.fresh[config_key(c.record)]
        fresh_mean = statistics.fmean(fresh)
        curse = c.accuracy - fresh_mean
        if i > 0:
            curses.append(curse)
        mflops = c.mflops
        recorded_points.append((c.accuracy, mflops))
        fresh_points.append((fresh_mean, mflops))
        rows.append(
            {
                "task": front.task,
                "seed": front.seed,
                "front": front.kind,
                "config": c.number,
                "mflops": round(mflops, 4),
                "cheapest": i == 0,
                "recorded_accuracy": round(c.accuracy, 5),
                "recorded_runs": c.runs_count,
                "fresh_mean": round(fresh_mean, 5),
                "fresh_sd": round(statistics.stdev(fresh), 5) if len(fresh) > 1 else "",
                "curse": round(curse, 5),
                "fresh_accuracies": " ".join(f"{a:.4f}" for a in fresh),
            }
        )
    reference = (front.reference["accuracy"], front.reference["mflops"])
    fresh_sd = _pooled_sd([front.fresh[config_key(c.record)] for c in front.members])
    curse_mean = statistics.fmean(curses) if curses else float("nan")
    summary = {
        "task": front.task,
        "seed": front.seed,
        "front": front.kind,
        "budget": front.budget,
        "trainings": front.trainings,
        "epochs": front.epochs,
        "members": len(front.members),
        "curse_mean": round(curse_mean, 5),
        "fresh_sd": round(fresh_sd, 5) if fresh_sd is not None else "",
        "curse_in_fresh_sd": round(curse_mean / fresh_sd, 3) if fresh_sd and curses else "",
        "hv_recorded": round(hypervolume(recorded_points, ("max", "min"), reference), 5),
        "hv_fresh": round(hypervolume(fresh_points, ("max", "min"), reference), 5),
        "study_noise_sd": round(front.noise_sd, 5) if front.noise_sd is not None else "",
        "seconds": round(front.seconds, 1),
    }
    return rows, summary


def _append(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def pooled(out: Path) -> list[dict[str, Any]]:
    """Per (task, front), over every seed in the rows CSV ``out`` and its summary: the curse
    averaged over all members but each front's cheapest, the pooled sd of their fresh runs,
    and the mean hypervolumes. Written to ``<out>.pooled.csv``."""
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    with out.with_suffix(".summary.csv").open() as handle:
        summaries = list(csv.DictReader(handle))
    table = []
    for task, kind in dict.fromkeys((r["task"], r["front"]) for r in rows):
        members = [r for r in rows if (r["task"], r["front"]) == (task, kind) and r["cheapest"] != "True"]
        fronts = [s for s in summaries if (s["task"], s["front"]) == (task, kind)]
        curse = statistics.fmean(float(r["curse"]) for r in members) if members else float("nan")
        fresh_sd = _pooled_sd([[float(a) for a in r["fresh_accuracies"].split()] for r in members])
        table.append(
            {
                "task": task,
                "front": kind,
                "seeds": " ".join(s["seed"] for s in fronts),
                "members": len(members),
                "curse_mean": round(curse, 5),
                "fresh_sd": round(fresh_sd, 5) if fresh_sd else "",
                "curse_in_fresh_sd": round(curse / fresh_sd, 3) if fresh_sd else "",
                "hv_recorded_mean": round(statistics.fmean(float(s["hv_recorded"]) for s in fronts), 5),
                "hv_fresh_mean": round(statistics.fmean(float(s["hv_fresh"]) for s in fronts), 5),
                "epochs_per_seed": " ".join(s["epochs"] for s in fronts),
            }
        )
    path = out.with_suffix(".pooled.csv")
    path.unlink(missing_ok=True)
    _append(path, POOLED_COLUMNS, table)
    return table


def _pair(args: argparse.Namespace, task: str, seed: int, work: Path, race: int, start=None) -> list[Front]:
    """The confirmed search with ``--race race`` and the single-run search at its epochs.
    ``start``: the (confirmed, single) studies without racing, whose trials the two begin with
    (racing a finished confirmed study is what continuing it with ``--race`` does)."""
    label = _race_label(race)
    print(f"{task} seed {seed}: confirmed search, --budget {args.budget} --confirm {args.confirm} --race {race}")
    settings = settings_for(args, task, seed, args.budget, args.confirm, race, work)
    study, seconds = run_search(settings, start_from=start[0] if start else None, whole=True)
    confirmed = front_of(study, task, seed, "confirmed" + label, args.budget, seconds)
    print(f"  trained {confirmed.trainings} in all; single-run search with as many trials", flush=True)
    settings = settings_for(args, task, seed, confirmed.trainings, 0, 0, work)
    single_study, seconds = run_search(settings, start_from=start[1] if start else study, whole=bool(start))
    single = front_of(single_study, task, seed, "single" + label, confirmed.trainings, seconds)
    return [single, confirmed]


def run_task(args: argparse.Namespace, task: str, seed: int, work: Path) -> list[dict[str, Any]]:
    single, confirmed = fronts = _pair(args, task, seed, work, 0)
    if args.race:
        fronts += _pair(args, task, seed, work, args.race, start=(confirmed.study, single.study))
    retrain_fresh(fronts, args.fresh, work / f"fresh-{task.replace(':', '-')}-{seed}.json")
    summaries = []
    for front in fronts:
        rows, summary = rows_and_summary(front)
        _append(args.out, ROW_COLUMNS, rows)
        summaries.append(summary)
    _append(args.out.with_suffix(".summary.csv"), SUMMARY_COLUMNS, summaries)
    return summaries


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", default="digits32:vgg_flgc,digits:vgg_hetconv", help="comma-separated DATASET:SPACE")
    p.add_argument("--seeds", type=int, default=2, help="search seeds per task")
    p.add_argument("--seed-start", type=int, default=0, help="first search seed (to extend a run)")
    p.add_argument("--budget", type=int, default=16, help="--budget of the confirmed search")
    p.add_argument("--confirm", type=int, default=2, help="--confirm of the confirmed search")
    p.add_argument(
        "--race",
        type=int,
        default=3,
        help="also race: the same pair with --race K, begun from the pair without (0: only --race 0)",
    )
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--fresh", type=int, default=3, help="fresh retrainings of every front configuration")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out", type=Path, default=Path("bench/results/confirmation.csv"))
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep the studies here and continue them (default: a temporary folder)",
    )
    p.add_argument("--pool-only", action="store_true", help="only pool the seeds already in --out (its .pooled.csv)")
    args = p.parse_args(argv)
    if args.pool_only:
        _print_pooled(pooled(args.out))
        return 0
    from search.quiet import quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="confirm-bench-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        summaries = []
        for task in args.tasks.split(","):
            for seed in range(args.seed_start, args.seed_start + args.seeds):
                summaries += run_task(args, task, seed, work)
    print()
    print(
        f"{'task':<22}{'seed':>5}  {'front':<10}{'members':>8}{'curse':>9}{'fresh sd':>10}{'curse/sd':>9}{'HV fresh':>10}{'epochs':>8}"
    )
    for s in summaries:
        print(
            f"{s['task']:<22}{s['seed']:>5}  {s['front']:<10}{s['members']:>8}{s['curse_mean']:>9}"
            f"{s['fresh_sd']!s:>10}{s['curse_in_fresh_sd']!s:>9}{s['hv_fresh']:>10}{s['epochs']:>8}"
        )
    _print_pooled(pooled(args.out))
    print(f"rows: {args.out}, summaries: {args.out.with_suffix('.summary.csv')}, pooled: ...pooled.csv")
    return 0


def _print_pooled(table: list[dict[str, Any]]) -> None:
    print(f"\nover seeds (members but the cheapest):\n{'task':<22}{'front':<10}{'seeds':>8}{'members':>8}", end="")
    print(f"{'curse':>9}{'fresh sd':>10}{'curse/sd':>9}{'HV fresh':>10}")
    for t in table:
        print(
            f"{t['task']:<22}{t['front']:<10}{t['seeds']:>8}{t['members']:>8}{t['curse_mean']:>9}"
            f"{t['fresh_sd']!s:>10}{t['curse_in_fresh_sd']!s:>9}{t['hv_fresh_mean']:>10}"
        )


if __name__ == "__main__":
    sys.exit(main())
