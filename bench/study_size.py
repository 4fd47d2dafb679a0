#!/usr/bin/env python
"""What the tool itself costs as a study grows to thousands of trials: per trial in a search,
and for ``report`` and ``export``.

1. **A real study.** A real quick search (``--preset quick --epochs E``, ``--base-trials``
   trials, ``--confirm 1``: some configurations have several runs) and a real one-shot search
   (a supernet of ``--supernet-epochs``, ``--base-trials`` scored candidates), or the ones given
   with ``--base``.
2. **Grown to N trials** (``--sizes``) with *distinct* configurations: each added trial is a copy
   of one of the real study's trials (its attributes, curve, times, seed rule) with other
   per-layer choices, drawn at random, its MFLOPs, all-ops MFLOPs and parameters those of the
   new architecture (sums of per-layer differences counted with ptflops, checked against a full
   count), and an accuracy on a noisy trend in log MFLOPs (so that the front holds tens to
   hundreds of configurations, as a real large study's does); a few percent are further runs
   of an added configuration (``repeat_of``), as ``--confirm`` makes. Each size grows the
   previous one, so the smaller studies are the first trials of the larger.
3. **Continued by a few trials** on a copy of each, as a user would, whole processes:
   ``optuna1`` (the Optuna backend), ``optuna4`` (``--workers 4``), ``ray`` (``--backend ray
   --max-concurrent 1``) and ``oneshot`` (``--strategy one-shot`` on the grown one-shot study).
   **What the tool adds per trial** is read from the study: for the trials one worker ran in a
   row, ``(completion of the last - completion of the first - training of all but the first) /
   (trials - 1)`` (training: ``train_seconds``, one-shot: ``score_seconds``), so it holds
   everything between two trainings (asking, sampling, counting the cost, building the model,
   telling, the budget count, the front of the progress line, the heartbeat, Ray's scheduling)
   and nothing of the process start, which is reported apart (``startup_s``: process start to
   the first trial's start). With ``--workers 4`` each worker's trials are told apart by the
   ``[worker i]`` prefix of its progress lines.
4. ``report`` and ``export`` of each grown study, whole processes (PNGs included when a
   Chromium is found), with their peak memory (``ru_maxrss`` of the process and what it waited
   for, read by a small wrapper process: see ``run_measured``).

With ``--before DIR`` (a checkout of another commit, e.g. ``git archive issue21 | tar -x -C
DIR``) every command also runs with that code, on its own copy, right after this code's run,
so that both face the same machine load. Timings on a shared machine are noisy: compare ratios
within one run. One CSV row per (code, size, what); a table is printed, and a Markdown table and
a figure are written beside the CSV.

    python bench/study_size.py                                   # 500, 2000, 5000, 10000 trials; three sizes took 35 min here
    python bench/study_size.py --sizes 500,5000 --before /tmp/old   # before/after
    python bench/study_size.py --sizes 100,300 --variants optuna1 --base-trials 6 --more 3   # smoke test
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
SPACE = "vgg_hetconv"
STUDY = f"{SPACE}-digits"  # what the quick preset calls a search of SPACE
ONE_SHOT_STUDY = f"{STUDY}-oneshot"
VARIANTS = ("optuna1", "optuna4", "ray", "oneshot")
COLUMNS = (
    "code",
    "size",
    "what",
    "trials_timed",
    "per_trial_s",
    "per_trial_sd_s",
    "startup_s",
    "wall_s",
    "peak_mb",
    "front",
    "html_mb",
    "returncode",
)
# How an added configuration's accuracy is drawn: a trend in log MFLOPs, the configuration's own
# offset and each run's noise (accuracy units). They set the front's size: about 70
# configurations at 500 trials, about 150 at 10000.
TREND = (0.55, 0.09)
CONFIG_SD = 0.0015
RUN_SD = 0.0015
REPEAT_SHARE = 0.03  # added trials that are a further run of an added configuration


# ---------------------------------------------------------------------------------------------
# running a command and timing it
# ---------------------------------------------------------------------------------------------
@dataclass
class Finished:
    returncode: int
    wall_s: float
    peak_mb: float
    started: datetime  # local naive time, as Optuna records trials
    log: Path


# Linux hands a process its parent's peak resident memory at exec (the mm it replaces counts),
# so a command started from this process, which holds the grown studies, would report at least
# this process's peak. A small Python in between starts the command from its own small memory
# and writes the peak of what it waited for (the command and its children).
_PEAK_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code if code >= 0 else 128 - code)\n"
)


def run_measured(
    command: list[str], cwd: Path, log: Path, timeout: float, env: dict[str, str] | None = None
) -> Finished:
    """Run ``command`` with stdout and stderr in ``log``; its wall time and peak resident memory
    (``ru_maxrss`` of the command and the children it waited for, read by a small wrapper
    process). Killed past ``timeout``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    import subprocess

    peak_file = log.with_suffix(".peak")
    peak_file.unlink(missing_ok=True)
    with log.open("w") as out:
        started = datetime.now()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", _PEAK_WRAPPER, str(peak_file), *command],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env or os.environ,
        )
        while True:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status = os.waitpid(proc.pid, 0)
                break
            time.sleep(0.1)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak_kb = float(peak_file.read_text()) if peak_file.is_file() else math.nan  # none when killed
    return Finished(proc.returncode, wall, peak_kb / 1024, started, log)


def cli(code: Path, *args: str) -> list[str]:
    return [sys.executable, str(code / "run_search.py"), *args]


def storage_of(folder: Path) -> str:
    return f"sqlite:///{folder / 'studies.db'}"


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)


def load(folder: Path, name: str = STUDY):
    import optuna

    return optuna.load_study(study_name=name, storage=storage_of(folder))


# ---------------------------------------------------------------------------------------------
# 1. the real studies
# ---------------------------------------------------------------------------------------------
def quick_args(args: argparse.Namespace) -> list[str]:
    return ["--preset", "quick", "--epochs", str(args.epochs), "--threads", "1", "--space", SPACE]


def one_shot_args(args: argparse.Namespace) -> list[str]:
    return [*quick_args(args), "--strategy", "one-shot", "--supernet-epochs", str(args.supernet_epochs)]


def make_bases(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """The real train-each and one-shot studies (made once in ``work``, or ``--base``)."""
    if args.base:
        train, shot = args.base / "train", args.base / "oneshot"
        if not (train / "studies.db").is_file() or not (shot / "studies.db").is_file():
            raise SystemExit(f"error: --base {args.base} must hold train/studies.db and oneshot/studies.db")
        return train, shot
    train, shot = work / "base" / "train", work / "base" / "oneshot"
    budget = str(args.base_trials)
    if not (train / "studies.db").is_file():
        print(f"real quick study of {budget} trials in {train} ...", flush=True)
        done = run_measured(
            cli(
                ROOT,
                "search",
                *quick_args(args),
                "--budget",
                budget,
                "--confirm",
                "1",
                "--no-report",
                "--results-dir",
                str(train),
            ),
            work,
            work / "logs" / "base_train.log",
            args.timeout * 4,
        )
        if done.returncode:
            raise SystemExit(f"error: the real study failed, see {done.log}")
    if not (shot / "studies.db").is_file():
        print(f"real one-shot study of {budget} candidates in {shot} ...", flush=True)
        done = run_measured(
            cli(ROOT, "search", *one_shot_args(args), "--budget", budget, "--retrain-top", "0", "--confirm", "0")
            + ["--no-report", "--results-dir", str(shot)],
            work,
            work / "logs" / "base_oneshot.log",
            args.timeout * 4,
        )
        if done.returncode:
            raise SystemExit(f"error: the real one-shot study failed, see {done.log}")
    return train, shot


# ---------------------------------------------------------------------------------------------
# 2. growing a study with distinct configurations
# ---------------------------------------------------------------------------------------------
class LayerCosts:
    """A candidate's MFLOPs (both conventions) and parameters as the dense model's plus, per
    layer, what its choice changes: a convolution's cost depends on its own choice only, so they
    add up (checked against a full ptflops count of a few candidates)."""

    def __init__(self, space, cache: Path) -> None:
        from models import Architecture
        from search.evaluation.cost import architecture_cost

        self.space = space
        if cache.is_file():
            saved = json.loads(cache.read_text())
            self.base, self.delta = saved["base"], {tuple(json.loads(k)): v for k, v in saved["delta"].items()}
        else:
            dense = space.dense()
            cost = architecture_cost(dense)
            self.base = [cost.mflops, cost.mflops_all_ops, cost.params]
            self.delta = {}
            for i, options in enumerate(space.choices):
                for spec in options:
                    layers = list(dense.layers)
                    layers[i] = spec
                    c = architecture_cost(Architecture(dense.model, dense.width, dense.num_classes, tuple(layers)))
                    self.delta[(i, spec.label)] = [
                        c.mflops - cost.mflops,
                        c.mflops_all_ops - cost.mflops_all_ops,
                        c.params - cost.params,
                    ]
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(
                json.dumps({"base": self.base, "delta": {json.dumps(list(k)): v for k, v in self.delta.items()}})
            )
        rng = random.Random(1)
        for _ in range(3):
            arch = self.random(rng)
            counted = architecture_cost(arch)
            summed = self(arch)
            assert math.isclose(summed[0], counted.mflops, rel_tol=1e-9), (summed, counted)
            assert math.isclose(summed[1], counted.mflops_all_ops, rel_tol=1e-9), (summed, counted)
            assert summed[2] == counted.params, (summed, counted)

    def random(self, rng: random.Random):
        from models import Architecture

        space = self.space
        return Architecture(space.model, space.width, space.num_classes, tuple(rng.choice(o) for o in space.choices))

    def __call__(self, arch) -> tuple[float, float, int]:
        sums = [
            sum(values) for values in zip(self.base, *(self.delta[(i, s.label)] for i, s in enumerate(arch.layers)))
        ]
        return sums[0], sums[1], int(round(sums[2]))


def grow(source: Path, target: Path, name: str, size: int, costs: LayerCosts, seed: int, one_shot: bool) -> None:
    """Copy ``source``'s storage to ``target`` and add trials to study ``name`` until it has
    ``size``: copies of its own real trials with new, distinct configurations (see the module's
    docstring). Deterministic in ``seed`` and the size of the source study."""
    target.mkdir(parents=True, exist_ok=True)
    # Built in memory-backed storage where there is one (each added trial is a commit, a disk
    # sync of the whole file otherwise), then moved into place.
    scratch = Path(tempfile.mkdtemp(prefix="study-size-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    shutil.copy(source / "studies.db", scratch / "studies.db")
    try:
        _add_trials(load(scratch, name), costs, seed, size, one_shot)
        shutil.move(scratch / "studies.db", target / "studies.db")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _add_trials(study, costs: LayerCosts, seed: int, size: int, one_shot: bool) -> None:
    from optuna.trial import FrozenTrial, TrialState

    from models import LayerSpec

    trials = study.get_trials(deepcopy=False)
    real = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and "architecture" in t.user_attrs and "repeat_of" not in t.user_attrs
    ]
    real = [t for t in real if not t.user_attrs.get("grown")] or real
    originals = [t for t in trials if t.user_attrs.get("grown") and "repeat_of" not in t.user_attrs]
    if not real:
        raise SystemExit(f"error: study {study.study_name} has no complete trial to copy")
    distributions = real[0].distributions
    rng = random.Random(seed * 1_000_003 + len(trials))
    measured = "score_seconds" if one_shot else "train_seconds"
    last = max(t.datetime_complete for t in trials if t.datetime_complete is not None)
    added: list[FrozenTrial] = []
    seen = {json.dumps(t.user_attrs["architecture"], sort_keys=True) for t in trials if "architecture" in t.user_attrs}
    for number in range(len(trials), size):
        model = real[number % len(real)]
        attrs = json.loads(json.dumps(model.user_attrs))
        attrs.pop("baseline", None)
        attrs.pop("repeat_of", None)
        if originals and rng.random() < REPEAT_SHARE:  # a further run of an added configuration
            first = rng.choice(originals)
            arch_json = first.user_attrs["architecture"]
            accuracy = first.user_attrs["bench_mean"] + rng.gauss(0.0, RUN_SD)
            attrs["repeat_of"] = first.number
            mflops, mflops_all_ops, params = (
                first.user_attrs["mflops"],
                first.user_attrs["mflops_all_ops"],
                first.user_attrs["params"],
            )
            mean = first.user_attrs["bench_mean"]
        else:
            while True:
                arch = costs.random(rng)
                arch_json = arch.to_json()
                if json.dumps(arch_json, sort_keys=True) not in seen:
                    break
            seen.add(json.dumps(arch_json, sort_keys=True))
            mflops, mflops_all_ops, params = costs(arch)
            mean = TREND[0] + TREND[1] * math.log(mflops) + rng.gauss(0.0, CONFIG_SD)
            accuracy = mean + rng.gauss(0.0, RUN_SD)
        accuracy = min(0.999, max(0.0, accuracy))
        attrs.update(architecture=arch_json, mflops=mflops, mflops_all_ops=mflops_all_ops, params=params, seed=number)
        attrs.update(grown=True, bench_mean=mean)
        if "curve" in attrs and attrs["curve"]:
            shift = accuracy - float(attrs["curve"][-1].get("val_accuracy") or 0.0)
            for epoch in attrs["curve"]:
                if epoch.get("val_accuracy") is not None:
                    epoch["val_accuracy"] = min(1.0, max(0.0, epoch["val_accuracy"] + shift))
        values = [
            accuracy if o == "accuracy" else mflops if o == "mflops" else float(params)
            for o in study.user_attrs["objectives"]
        ]
        seconds = float(attrs.get(measured) or 1.0)
        start = last + timedelta(seconds=0.5)
        last = start + timedelta(seconds=seconds)
        params_of = {
            slot.name: LayerSpec.from_json(spec).label for slot, spec in zip(costs.space.slots, arch_json["layers"])
        }
        frozen = FrozenTrial(
            number=number,
            state=TrialState.COMPLETE,
            value=None,
            values=values,
            datetime_start=start,
            datetime_complete=last,
            params=params_of,
            distributions=distributions,
            user_attrs=attrs,
            # a genetic sampler's generation (NSGA-II, the one-shot default): as if it had run
            system_attrs={key: number // 20 for key in model.system_attrs if key.endswith(":generation")},
            intermediate_values={},
            trial_id=0,
        )
        added.append(frozen)
        if "repeat_of" not in attrs:
            originals.append(frozen)
    for start in range(0, len(added), 500):
        study.add_trials(added[start : start + 500])
    assert len(study.get_trials(deepcopy=False)) == size


def studies_of(args: argparse.Namespace, work: Path, train: Path, shot: Path) -> dict[int, Path]:
    """Grown copies of both real studies, one folder per size (reused when there already)."""
    from spaces import get_space

    space = get_space(SPACE, width=0.25, num_classes=10)
    costs = LayerCosts(space, work / "layer_costs.json")
    grown: dict[int, Path] = {}
    previous = {"train": train, "oneshot": shot}
    for size in sorted(args.sizes):
        folder = work / f"n{size}"
        for kind, name in (("train", STUDY), ("oneshot", ONE_SHOT_STUDY)):
            if kind == "oneshot" and "oneshot" not in args.variants:
                continue
            target = folder / kind
            if not (target / "studies.db").is_file() or len(load(target, name).get_trials(deepcopy=False)) != size:
                print(f"growing {name} to {size} trials in {target} ...", flush=True)
                t0 = time.perf_counter()
                grow(previous[kind], target, name, size, costs, args.seed, kind == "oneshot")
                print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
            if kind == "oneshot":
                warm_parent_populations(load(target, name))
            previous[kind] = target
        grown[size] = folder
    return grown


def warm_parent_populations(study) -> None:
    """NSGA-II's parent population of every generation of a grown one-shot study, cached in it
    from the first generation up, as a search that ran those generations would have left them.
    Without the cache, the first ask of the continued search selects the parents of the last
    generation recursively through all earlier ones (about 500 at 10000 trials: past Python's
    recursion limit)."""
    import optuna

    generations = [
        value for t in study.get_trials(deepcopy=False) for key, value in t.system_attrs.items()
        if key.endswith(":generation")
    ]  # fmt: skip
    sampler = optuna.samplers.NSGAIISampler(population_size=20)
    for generation in range(1, max(generations, default=0) + 1):
        sampler.get_parent_population(study, generation)


# ---------------------------------------------------------------------------------------------
# 3. a search continued by a few trials, and what the tool adds per trial
# ---------------------------------------------------------------------------------------------
def fresh_copy(source: Path, target: Path) -> None:
    """``source`` (a study folder) copied to ``target``: the database and a trained supernet."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copy(source / "studies.db", target / "studies.db")
    for supernet in source.glob("*/supernet"):
        shutil.copytree(supernet, target / supernet.parent.name / "supernet")


def per_trial(
    folder: Path, name: str, first_new: int, log: Path, measured: str
) -> tuple[int, float, float, datetime | None]:
    """(trials timed, mean and sd of what the tool added per trial, start of the first new
    trial), from the new trials' times in the study (see the module's docstring)."""
    from optuna.trial import TrialState

    new = [t for t in load(folder, name).get_trials(deepcopy=False) if t.number >= first_new]
    done = [t for t in new if t.state == TrialState.COMPLETE and t.datetime_complete is not None]
    workers: dict[int, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        match = re.match(r"\[worker (\d+)\] .*?\btrial (\d+)(?: \(repeat of #\d+\))?:", line)
        if match:
            workers[int(match.group(2))] = int(match.group(1))
    chains: dict[int, list] = {}
    for t in done:
        chains.setdefault(workers.get(t.number, 0), []).append(t)
    gaps = []
    for chain in chains.values():
        chain.sort(key=lambda t: t.datetime_complete)
        for a, b in zip(chain, chain[1:]):
            gaps.append(
                (b.datetime_complete - a.datetime_complete).total_seconds() - float(b.user_attrs.get(measured) or 0.0)
            )
    starts = [t.datetime_start for t in new if t.datetime_start is not None]
    if not gaps:
        return 0, math.nan, math.nan, min(starts, default=None)
    sd = statistics.stdev(gaps) if len(gaps) > 1 else math.nan
    return len(gaps), statistics.fmean(gaps), sd, min(starts, default=None)


def continue_search(
    args: argparse.Namespace, code: Path, label: str, size: int, variant: str, grown: Path, work: Path
) -> dict[str, Any]:
    kind = "oneshot" if variant == "oneshot" else "train"
    name = ONE_SHOT_STUDY if kind == "oneshot" else STUDY
    folder = work / "runs" / f"n{size}" / f"{variant}-{label}"
    fresh_copy(grown / kind, folder)
    study = load(folder, name)
    from search.backends.study import count_finished

    first_new = len(study.get_trials(deepcopy=False))
    finished = count_finished(study)
    more = args.more * (4 if variant == "optuna4" else 1) + (args.more if variant == "oneshot" else 0)
    common = ["--budget", str(finished + more), "--confirm", "0", "--no-report", "--results-dir", str(folder)]
    if variant == "oneshot":
        command = cli(code, "search", *one_shot_args(args), "--retrain-top", "0", *common)
    else:
        command = cli(code, "search", *quick_args(args), *common)
        if variant == "optuna4":
            command += ["--workers", "4"]
        elif variant == "ray":
            command += ["--backend", "ray", "--max-concurrent", "1", "--cpus-per-trial", "1"]
    done = run_measured(command, work, work / "logs" / f"n{size}-{variant}-{label}.log", args.timeout)
    measured = "score_seconds" if variant == "oneshot" else "train_seconds"
    timed, mean, sd, first_start = per_trial(folder, name, first_new, done.log, measured)
    startup = (first_start - done.started).total_seconds() if first_start is not None else math.nan
    shutil.rmtree(folder / "ray", ignore_errors=True)
    return {
        "code": label,
        "size": size,
        "what": variant,
        "trials_timed": timed,
        "per_trial_s": round(mean, 3),
        "per_trial_sd_s": round(sd, 3),
        "startup_s": round(startup, 2),
        "wall_s": round(done.wall_s, 2),
        "peak_mb": round(done.peak_mb),
        "returncode": done.returncode,
    }


# ---------------------------------------------------------------------------------------------
# 4. report and export
# ---------------------------------------------------------------------------------------------
def report_and_export(
    args: argparse.Namespace, code: Path, label: str, size: int, grown: Path, work: Path
) -> list[dict[str, Any]]:
    folder = work / "runs" / f"n{size}" / f"report-{label}"
    fresh_copy(grown / "train", folder)
    rows = []
    for what in ("report", "export"):
        done = run_measured(
            cli(code, what, "--study", STUDY, "--results-dir", str(folder)),
            work,
            work / "logs" / f"n{size}-{what}-{label}.log",
            args.timeout,
        )
        row: dict[str, Any] = {
            "code": label,
            "size": size,
            "what": what,
            "wall_s": round(done.wall_s, 2),
            "peak_mb": round(done.peak_mb),
            "returncode": done.returncode,
        }
        if what == "report" and (folder / STUDY / "report.html").is_file():
            row["html_mb"] = round((folder / STUDY / "report.html").stat().st_size / 2**20, 2)
        if what == "export":
            row["front"] = len(list((folder / STUDY / "pareto").glob("trial_*.json")))
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})


def _cell(row: dict[str, Any] | None, key: str, unit: str = "") -> str:
    if row is None or row.get(key) in (None, "") or (isinstance(row.get(key), float) and math.isnan(row[key])):
        return "–"
    if row.get("returncode"):
        return f"failed ({row['returncode']})"
    return f"{row[key]}{unit}"


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table: one row per size, a column per measure (and per code)."""
    codes = list(dict.fromkeys(r["code"] for r in rows))
    sizes = sorted({r["size"] for r in rows})
    find = {(r["code"], r["size"], r["what"]): r for r in rows}
    columns = [
        *((f"{v} per trial", v, "per_trial_s", " s") for v in VARIANTS),
        ("report", "report", "wall_s", " s"),
        ("report peak", "report", "peak_mb", " MB"),
        ("export", "export", "wall_s", " s"),
        ("front", "export", "front", ""),
    ]
    present = [c for c in columns if any((code, size, c[1]) in find for code in codes for size in sizes)]
    head = ["trials", *(f"{title} ({code})" if len(codes) > 1 else title for title, *_ in present for code in codes)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for size in sizes:
        cells = [f"{size:,}"]
        for _, what, key, unit in present:
            for code in codes:
                cells.append(_cell(find.get((code, size, what)), key, unit))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Per-trial overhead, report and export time against the study's size (PNG via kaleido)."""
    try:
        import kaleido
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("what the tool adds per trial (s)", "whole process (s)"))
    for code in dict.fromkeys(r["code"] for r in rows):
        dash = "solid" if code == "this" else "dot"
        for panel, whats, key in ((1, VARIANTS, "per_trial_s"), (2, ("report", "export"), "wall_s")):
            for what in whats:
                points = sorted(
                    (r["size"], r[key])
                    for r in rows
                    if r["code"] == code and r["what"] == what and not r.get("returncode")
                )
                points = [(s, v) for s, v in points if isinstance(v, (int, float)) and not math.isnan(v)]
                if points:
                    fig.add_trace(
                        go.Scatter(
                            x=[p[0] for p in points],
                            y=[p[1] for p in points],
                            mode="lines+markers",
                            name=f"{what} ({code})",
                            line={"dash": dash},
                        ),
                        row=1,
                        col=panel,
                    )
    fig.update_xaxes(type="log", title_text="trials in the study")
    fig.update_yaxes(rangemode="tozero")
    fig.update_layout(template="plotly_white", height=450, width=1200)
    try:
        spec = {"fig": fig.to_dict(), "path": path, "opts": {"format": "png", "width": 1200, "height": 450, "scale": 2}}
        kaleido.write_fig_from_object_sync([spec], kopts={"mathjax": False, "timeout": 60}, cancel_on_error=True)
    except Exception:  # noqa: BLE001  (no browser: the CSV and the table have every number)
        return None
    return path if path.is_file() else None


# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="500,2000,5000,10000", help="trials of the grown studies (comma-separated)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"searches to continue: {', '.join(VARIANTS)}")
    p.add_argument(
        "--more", type=int, default=10, help="trials each search is continued by (x4 with 4 workers, x2 one-shot)"
    )
    p.add_argument("--base-trials", type=int, default=12, help="trials of the real studies")
    p.add_argument("--epochs", type=int, default=1, help="--epochs of the real study and of the continued searches")
    p.add_argument("--supernet-epochs", type=int, default=1)
    p.add_argument("--base", type=Path, default=None, help="a folder with train/ and oneshot/ real studies to reuse")
    p.add_argument("--before", type=Path, default=None, help="another checkout: run every command with it too")
    p.add_argument("--no-report", action="store_true", help="time the searches only")
    p.add_argument("--work", type=Path, default=None, help="working folder (kept; grown studies are reused)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    p.add_argument("--out", type=Path, default=Path("bench/results/study_size.csv"))
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"error: unknown variant(s) {sorted(unknown)}; use {', '.join(VARIANTS)}")
    if args.before is not None and not (args.before / "run_search.py").is_file():
        raise SystemExit(f"error: --before {args.before} has no run_search.py")
    quiet_optuna()
    work = (args.work or Path("results") / "bench" / "study_size").resolve()
    work.mkdir(parents=True, exist_ok=True)
    train, shot = make_bases(args, work)
    grown = studies_of(args, work, train, shot)
    codes = [("this", ROOT)] + ([("before", args.before.resolve())] if args.before is not None else [])
    rows: list[dict[str, Any]] = []
    for size in sorted(args.sizes):
        for variant in args.variants:
            for label, code in codes:
                print(f"n={size} {variant} ({label}) ...", flush=True)
                rows.append(continue_search(args, code, label, size, variant, grown[size], work))
                print(f"  {rows[-1]}", flush=True)
                write_csv(rows, args.out)
        if not args.no_report:
            for label, code in codes:
                print(f"n={size} report, export ({label}) ...", flush=True)
                rows += report_and_export(args, code, label, size, grown[size], work)
                print(f"  {rows[-2]}\n  {rows[-1]}", flush=True)
                write_csv(rows, args.out)
    markdown = table(rows)
    args.out.with_suffix(".md").write_text(markdown + "\n")
    png = figure(rows, args.out.with_suffix(".png"))
    print("\n" + markdown)
    print(f"\n{args.out}, {args.out.with_suffix('.md')}" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
