#!/usr/bin/env python
"""Early-stopping benchmark: what ``--early-stop mo-asha`` saves, and what it costs in front quality.

For each seed, the same search (Optuna backend, in-process, real training on ``--dataset``,
``digits`` by default; same space, sampler, budget and seed) runs twice in a fresh temporary storage: once with
every trial trained to ``--epochs`` (mode ``none``) and once with multi-objective ASHA
(mode ``mo-asha``, rungs ``min_epochs * eta**k`` below ``--epochs``). From each finished
study, trials in order of completion give:

- ``epochs_cum``: training epochs consumed so far (``epochs_run`` of every trial,
  early-stopped ones included: that is the compute actually spent);
- ``seconds_cum``: wall-clock since the first trial started (``datetime_complete`` of the
  trial minus the first ``datetime_start``);
- ``hypervolume``: hypervolume of the front of the full-fidelity (complete) trials so far,
  against the study's fixed reference point (accuracy 0, the dense model's MFLOPs), so the
  values of both modes compare.

One CSV row per (mode, seed, trial): ``mode, seed, trial, epochs_cum, seconds_cum,
hypervolume``; a plotly HTML (and a PNG when kaleido can drive a Chromium) beside the CSV
shows hypervolume against epochs and against seconds, one line per mode and seed.

Reading the ratio
-----------------
``target = 0.95 * final hypervolume of the run without early stopping`` (same seed).
``ratio = epochs the mo-asha run had consumed when its hypervolume first reached the target
/ total epochs of the run without early stopping``. Below 1: early stopping reaches a
comparable front for less compute (0.4 = 60 % fewer epochs); 1 or more: no saving. If the
mo-asha run never reaches the target, the ratio is reported as not reached, with the
fraction of the target its final front attains (its front is worse, whatever it saved).
For reference, the same ratio is printed for the run without early stopping itself (how
early it got within 5 % of its own final value), and the ratio in seconds. A small budget
makes this noisy: the sampler sees different histories in the two modes, so compare the
median over several seeds.

    python bench/early_stopping.py --out results/bench/early_stopping.csv --seeds 3 --budget 20 \\
        --epochs 9 --eta 3 --min-epochs 1 --width 0.25 --space vgg_hetconv
    python bench/early_stopping.py --seeds 1 --budget 4 --epochs 3   # smoke test (1-2 minutes)
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("none", "mo-asha")
CSV_COLUMNS = ("mode", "seed", "trial", "epochs_cum", "seconds_cum", "hypervolume")
TARGET_FRACTION = 0.95


@dataclass
class Run:
    """One finished search, as rows in order of completion."""

    mode: str
    seed: int
    rows: list[dict[str, Any]]  # CSV rows
    wall_seconds: float  # of the whole run, study opening included
    stopped: int  # early-stopped trials

    @property
    def final_hv(self) -> float:
        return self.rows[-1]["hypervolume"] if self.rows else 0.0

    @property
    def total_epochs(self) -> int:
        return self.rows[-1]["epochs_cum"] if self.rows else 0

    @property
    def total_seconds(self) -> float:
        return self.rows[-1]["seconds_cum"] if self.rows else 0.0

    def first_reaching(self, target: float, key: str) -> float | None:
        """``key`` (epochs_cum or seconds_cum) at the first row whose hypervolume >= target."""
        for row in self.rows:
            if row["hypervolume"] >= target:
                return row[key]
        return None


# ----------------------------------------------------------------------------- runs


def settings_for(args: argparse.Namespace, seed: int, mode: str, results_dir: Path):
    """The search of one (mode, seed): the quick preset's training recipe on ``--dataset``."""
    from bench._recipe import quick_training
    from search.settings import Settings

    training = quick_training(args.dataset, args.data_dir, args.epochs, args.threads)
    return Settings(
        space=args.space,
        budget=args.budget,
        width=args.width,
        training=training,
        sampler=args.sampler,
        seed=seed,
        results_dir=str(results_dir),
        early_stop=mode,
        min_epochs=args.min_epochs,
        eta=args.eta,
        quiet=True,
        baselines=False,  # as first measured: sampled candidates only, single runs
        confirm=0,
    )


def rows_of(study, mode: str, seed: int) -> list[dict[str, Any]]:
    """CSV rows of a finished study: every finished trial in order of completion."""
    from optuna.trial import TrialState

    from search.reporting.front import hypervolume_over_trials
    from search.storage import load_records, study_objectives

    records = load_records(study)
    objectives = study_objectives(study)
    reference = {k: float(v) for k, v in dict(study.user_attrs["reference_point"]).items()}
    finished_states = {TrialState.COMPLETE.name, TrialState.PRUNED.name, TrialState.FAIL.name}
    finished = sorted(
        (r for r in records if r.state in finished_states and r.datetime_complete is not None),
        key=lambda r: (r.datetime_complete, r.number),
    )
    if not finished:
        return []
    # hypervolume after each full-fidelity trial, carried forward over the others
    complete, history = hypervolume_over_trials(records, objectives, reference)
    hv_after = {r.number: float(hv) for r, hv in zip(complete, history)}
    started = min(r.datetime_start for r in records if r.datetime_start is not None)
    rows, epochs, hv = [], 0, 0.0
    for r in finished:
        epochs += int(r.epochs_run if r.epochs_run is not None else len(r.curve))
        hv = hv_after.get(r.number, hv)
        rows.append(
            {
                "mode": mode,
                "seed": seed,
                "trial": r.number,
                "epochs_cum": epochs,
                "seconds_cum": round((r.datetime_complete - started).total_seconds(), 3),
                "hypervolume": hv,
            }
        )
    return rows


def warm_up(args: argparse.Namespace) -> None:
    """Load the data and train one cheap model for one epoch, so that the first timed run does
    not pay the process's one-time costs (thread pools, first kernels) alone."""
    from search.evaluation.evaluate import evaluate, get_dataset
    from spaces import get_space

    training = settings_for(args, 0, "none", Path("unused")).training
    data = get_dataset(training)
    space = get_space(args.space, width=args.width, num_classes=data.num_classes)
    evaluate(space.dense(), training.replace(epochs=1), seed=0)


def run_search(args: argparse.Namespace, seed: int, mode: str, work_dir: Path) -> Run:
    from optuna.trial import TrialState

    from search.backends.optuna_driver import run_optuna_search
    from search.evaluation.cost import architecture_cost

    results_dir = work_dir / f"{mode}-seed{seed}"
    # Both modes of a seed sample largely the same candidates: without this the second run
    # would find their FLOPs counts (about a second each) cached by the first.
    architecture_cost.cache_clear()
    started = time.perf_counter()
    study = run_optuna_search(settings_for(args, seed, mode, results_dir))
    wall = time.perf_counter() - started
    stopped = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    return Run(mode, seed, rows_of(study, mode, seed), wall, stopped)


# ----------------------------------------------------------------------------- summary


def compare(none: Run, asha: Run) -> dict[str, Any]:
    """Final hypervolumes, epochs, and the ratios of one seed (see the module docstring)."""
    target = TARGET_FRACTION * none.final_hv
    out: dict[str, Any] = {
        "seed": none.seed,
        "hv_none": none.final_hv,
        "hv_asha": asha.final_hv,
        "epochs_none": none.total_epochs,
        "epochs_asha": asha.total_epochs,
        "seconds_none": none.total_seconds,
        "seconds_asha": asha.total_seconds,
        "stopped": asha.stopped,
        "target": target,
    }
    if target <= 0:  # no front without early stopping: nothing to reach
        out.update(ratio=math.nan, ratio_seconds=math.nan, ratio_none=math.nan, reached=False, fraction=math.nan)
        return out
    epochs = asha.first_reaching(target, "epochs_cum")
    seconds = asha.first_reaching(target, "seconds_cum")
    own = none.first_reaching(target, "epochs_cum")
    out.update(
        reached=epochs is not None,
        ratio=epochs / none.total_epochs if epochs is not None else math.inf,
        ratio_seconds=seconds / none.total_seconds if seconds is not None and none.total_seconds > 0 else math.inf,
        ratio_none=own / none.total_epochs if own is not None else math.nan,
        fraction=asha.final_hv / target,
        epochs_to_target=epochs,
    )
    return out


def _ratio_text(c: dict[str, Any]) -> str:
    if math.isnan(c["ratio"]):
        return "ratio undefined (the run without early stopping has hypervolume 0)"
    if not c["reached"]:
        return f"target NOT reached: mo-asha's final front attains {c['fraction']:.1%} of the target"
    return (
        f"ratio {c['ratio']:.3f} ({c['epochs_to_target']} of {c['epochs_none']} epochs; "
        f"in seconds {c['ratio_seconds']:.3f}; none itself {c['ratio_none']:.3f})"
    )


def print_summary(comparisons: list[dict[str, Any]], out=sys.stdout) -> None:
    print(f"\ntarget = {TARGET_FRACTION:.0%} of the final hypervolume without early stopping", file=out)
    for c in comparisons:
        print(
            f"seed {c['seed']}: HV none {c['hv_none']:.4g}, mo-asha {c['hv_asha']:.4g} | "
            f"epochs none {c['epochs_none']}, mo-asha {c['epochs_asha']} ({c['stopped']} stopped) | {_ratio_text(c)}",
            file=out,
        )
    if not comparisons:
        return

    def med(key: str) -> float:
        return statistics.median(c[key] for c in comparisons)

    ratios = [c["ratio"] for c in comparisons if not math.isnan(c["ratio"])]
    if not ratios:
        ratio_text = "ratio undefined"
    else:
        median_ratio = statistics.median(ratios)
        reached = sum(c["reached"] for c in comparisons)
        ratio_text = (f"ratio {median_ratio:.3f}" if math.isfinite(median_ratio) else "ratio: target not reached") + (
            f" (target reached in {reached}/{len(comparisons)} seeds)"
        )
        if reached < len(comparisons):
            fractions = [c["fraction"] for c in comparisons if not c["reached"] and not math.isnan(c["fraction"])]
            if fractions:
                ratio_text += f"; where not reached, median fraction of the target {statistics.median(fractions):.1%}"
    print(
        f"median over {len(comparisons)} seed(s): HV none {med('hv_none'):.4g}, mo-asha {med('hv_asha'):.4g} | "
        f"epochs none {med('epochs_none'):g}, mo-asha {med('epochs_asha'):g} | {ratio_text}",
        file=out,
    )


# ----------------------------------------------------------------------------- outputs


def write_csv(path: Path, runs: list[Run]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for run in runs:
            for row in run.rows:
                writer.writerow({**row, "hypervolume": f"{row['hypervolume']:.6g}"})


def write_plot(path: Path, runs: list[Run]) -> tuple[Path, Path | None, str | None]:
    """Plotly HTML (and PNG when possible) of hypervolume against epochs and seconds."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    colors = {"none": "#1f77b4", "mo-asha": "#d62728"}
    dashes = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("hypervolume vs training epochs", "hypervolume vs wall-clock"))
    seeds = sorted({run.seed for run in runs})
    for run in runs:
        name = f"{run.mode}, seed {run.seed}"
        line = {"color": colors.get(run.mode), "dash": dashes[seeds.index(run.seed) % len(dashes)], "shape": "hv"}
        epochs = [0] + [r["epochs_cum"] for r in run.rows]
        seconds = [0.0] + [r["seconds_cum"] for r in run.rows]
        hv = [0.0] + [r["hypervolume"] for r in run.rows]
        for col, x in ((1, epochs), (2, seconds)):
            fig.add_trace(
                go.Scatter(x=x, y=hv, mode="lines", name=name, legendgroup=name, showlegend=col == 1, line=line),
                row=1,
                col=col,
            )
    for seed in seeds:  # the target of the ratio, per seed
        none = [run for run in runs if run.seed == seed and run.mode == "none"]
        if none and none[0].final_hv > 0:
            fig.add_hline(
                y=TARGET_FRACTION * none[0].final_hv,
                line={"color": "#999999", "width": 1, "dash": "dot"},
                annotation_text=f"{TARGET_FRACTION:.0%} target, seed {seed}",
                annotation_position="bottom right",
            )
    fig.update_xaxes(title_text="cumulative training epochs", row=1, col=1)
    fig.update_xaxes(title_text="seconds since the first trial started", row=1, col=2)
    fig.update_yaxes(title_text="hypervolume (accuracy × MFLOPs saved)", row=1, col=1)
    fig.update_layout(
        title="Early stopping (mo-asha) against full training", height=500, width=1200, template="plotly_white"
    )
    html = path.with_suffix(".html")
    fig.write_html(html, include_plotlyjs="cdn")
    png = path.with_suffix(".png")
    try:
        import kaleido

        png.unlink(missing_ok=True)
        spec = {"fig": fig.to_dict(), "path": png, "opts": {"format": "png", "width": 1200, "height": 500, "scale": 2}}
        kaleido.write_fig_from_object_sync([spec], kopts={"mathjax": False, "timeout": 60}, cancel_on_error=True)
    except Exception as err:  # noqa: BLE001  (the PNG is optional; the HTML has the figure)
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        return html, None, f"PNG not written ({reason}); the HTML has the figure"
    return html, (png if png.is_file() else None), None if png.is_file() else "PNG not written"


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="results/bench/early_stopping.csv", help="CSV (the plot goes beside it)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default: 3)")
    p.add_argument("--budget", type=int, default=20, help="finished trials per search (default: 20)")
    p.add_argument("--epochs", type=int, default=9, help="full training epochs (default: 9)")
    p.add_argument("--eta", type=int, default=3, help="mo-asha reduction factor (default: 3)")
    p.add_argument("--min-epochs", type=int, default=1, help="first rung (default: 1)")
    p.add_argument("--width", type=float, default=0.25, help="width multiplier (default: 0.25)")
    p.add_argument("--space", default="vgg_hetconv", help="search space (default: vgg_hetconv)")
    p.add_argument("--sampler", default="tpe", help="tpe, nsga2, gp or random (default: tpe)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    p.add_argument("--dataset", default="digits", help="digits, digits32, cifar10 or cifar100 (default: digits)")
    p.add_argument("--data-dir", default="data", help="where CIFAR is and digits32 is cached (default: data)")
    p.add_argument("--work-dir", default=None, help="keep the studies here (default: a temporary folder, removed)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from search.quiet import quiet_libraries
    from search.settings import SettingsError

    quiet_libraries()  # the benchmark prints its own summary lines

    try:  # refuse bad options before any training
        settings_for(args, 0, "mo-asha", Path("unused"))
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    work_dir = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench_es_"))
    runs: list[Run] = []
    comparisons: list[dict[str, Any]] = []
    began = time.perf_counter()
    try:
        warm_up(args)
        for seed in range(args.seeds):
            by_mode = {}
            # alternate which mode runs first, so that drifting machine load hits both alike
            for mode in MODES if seed % 2 == 0 else MODES[::-1]:
                run = run_search(args, seed, mode, work_dir)
                by_mode[mode] = run
                runs.append(run)
                print(
                    f"seed {seed} {mode:>7}: {len(run.rows)} trials ({run.stopped} stopped), {run.total_epochs} epochs, "
                    f"{run.wall_seconds:.0f}s, final HV {run.final_hv:.4g}",
                    flush=True,
                )
                write_csv(out, runs)  # after every run: a long benchmark leaves its partial results
            comparisons.append(compare(by_mode["none"], by_mode["mo-asha"]))
    finally:
        if not args.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    print_summary(comparisons)
    html, png, notice = write_plot(out, runs)
    print(f"\n{out} ({sum(len(r.rows) for r in runs)} rows), {html}" + (f", {png}" if png else ""))
    if notice:
        print(notice)
    print(f"total {time.perf_counter() - began:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
