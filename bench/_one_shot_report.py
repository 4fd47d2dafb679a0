"""Measures and outputs of ``bench/one_shot.py``: rank correlations, a study's hypervolume
and training epochs, medians over seeds, and the files and lines it writes (CSV, JSON
summary, HTML plot, the summary line)."""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

__all__ = [
    "CSV_COLUMNS",
    "MEDIAN_KEYS",
    "correlations",
    "json_safe",
    "medians",
    "print_summary",
    "rank_correlation",
    "study_hypervolume",
    "trained_epochs",
    "write_csv",
    "write_plot",
    "write_summary",
]

CSV_COLUMNS = (
    "seed",
    "candidate",
    "arch",
    "mflops",
    "one_shot_score",
    "standalone_accuracy",
    "standalone_retest",
    "score_seconds",
    "train_seconds",
)
MEDIAN_KEYS = (
    "kendall_tau",
    "spearman",
    "kendall_retest",
    "kendall_tau_mean",
    "standalone_range",
    "hv_one_shot_retrained",
    "hv_train_each",
    "hv_one_shot_scores",
    "epochs_one_shot",
    "epochs_train_each",
    "seconds_one_shot",
    "seconds_train_each",
)


def rank_correlation(x: list[float], y: list[float]) -> tuple[float, float, float, float]:
    """Kendall tau, its p-value, Spearman rho, its p-value (NaN for constant input)."""
    from scipy import stats

    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan, math.nan, math.nan, math.nan
    tau, rho = stats.kendalltau(x, y), stats.spearmanr(x, y)
    return float(tau.statistic), float(tau.pvalue), float(rho.statistic), float(rho.pvalue)


def correlations(rows: list[dict[str, Any]]) -> dict[str, float]:
    """One-shot score against stand-alone accuracy; with a retest, also stand-alone against
    itself (how well training ranks candidates at all: the ceiling of any proxy) and the
    one-shot score against the mean of both stand-alone runs (less training noise)."""
    scores = [r["one_shot_score"] for r in rows]
    first = [r["standalone_accuracy"] for r in rows]
    tau, tau_p, rho, rho_p = rank_correlation(scores, first)
    out = {
        "kendall_tau": tau,
        "kendall_p": tau_p,
        "spearman": rho,
        "spearman_p": rho_p,
        "standalone_range": max(first) - min(first) if first else math.nan,
    }
    if rows and all("standalone_retest" in r for r in rows):
        again = [r["standalone_retest"] for r in rows]
        out["kendall_retest"], _, out["spearman_retest"], _ = rank_correlation(first, again)
        mean = [(a + b) / 2 for a, b in zip(first, again)]
        out["kendall_tau_mean"], _, out["spearman_mean"], _ = rank_correlation(scores, mean)
    return out


def study_hypervolume(study) -> tuple[float, dict[str, float]]:
    """Hypervolume of a study's front against its own reference point, and that point."""
    from search.reporting.front import front_hypervolume
    from search.storage import load_records, study_objectives

    reference = {k: float(v) for k, v in dict(study.user_attrs["reference_point"]).items()}
    return front_hypervolume(load_records(study), study_objectives(study), reference), reference


def trained_epochs(study) -> int:
    """Training epochs the study's finished trials (complete or early-stopped) ran."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return sum(int(t.user_attrs.get("epochs_run") or 0) for t in trials)


def medians(summaries: list[dict[str, Any]]) -> dict[str, float]:
    """Median over seeds of every key of ``MEDIAN_KEYS`` (NaN and missing values left out)."""
    out = {}
    for key in MEDIAN_KEYS:
        values = [float(s[key]) for s in summaries if s.get(key) is not None and not math.isnan(float(s[key]))]
        out[key] = statistics.median(values) if values else math.nan
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """One row per (seed, candidate), columns ``CSV_COLUMNS``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    **row,
                    "mflops": f"{row['mflops']:.6g}",
                    "one_shot_score": f"{row['one_shot_score']:.6g}",
                    "standalone_accuracy": f"{row['standalone_accuracy']:.6g}",
                    "standalone_retest": f"{row['standalone_retest']:.6g}" if "standalone_retest" in row else "",
                    "score_seconds": f"{row['score_seconds']:.3f}",
                    "train_seconds": f"{row['train_seconds']:.3f}",
                }
            )


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def write_summary(path: Path, args: argparse.Namespace, summaries: list[dict[str, Any]], num_random: int) -> None:
    """The JSON summary: the options, the supernet's random sub-networks per step, every seed
    and the medians over seeds (non-finite numbers as null)."""
    config = dict(vars(args))
    payload = {"config": config, "num_random": num_random, "seeds": summaries, "median": medians(summaries)}
    path.write_text(json.dumps(json_safe(payload), indent=2))


def write_plot(path: Path, rows: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> Path:
    """Scatter of one-shot score against stand-alone accuracy, one series per seed, as HTML beside ``path``."""
    import plotly.graph_objects as go

    fig = go.Figure()
    by_seed = {s["seed"]: s for s in summaries}
    for seed in sorted({r["seed"] for r in rows}):
        mine = [r for r in rows if r["seed"] == seed]
        tau = by_seed.get(seed, {}).get("kendall_tau", math.nan)
        fig.add_trace(
            go.Scatter(
                x=[r["one_shot_score"] for r in mine],
                y=[r["standalone_accuracy"] for r in mine],
                mode="markers",
                name=f"seed {seed} (Kendall tau {tau:.2f})",
                text=[f"candidate {r['candidate']}<br>{r['mflops']:.2f} MFLOPs<br>{r['arch']}" for r in mine],
                hovertemplate="one-shot %{x:.4f}<br>stand-alone %{y:.4f}<br>%{text}<extra></extra>",
                marker={"size": 9, "opacity": 0.8},
            )
        )
    med = medians(summaries)
    fig.update_layout(
        title=f"One-shot score vs stand-alone accuracy (median Kendall tau {med['kendall_tau']:.3f}, "
        f"Spearman {med['spearman']:.3f})",
        xaxis_title="one-shot score (validation accuracy, inherited weights, BN recalibrated)",
        yaxis_title="stand-alone validation accuracy (trained from scratch)",
        template="plotly_white",
        height=560,
        width=900,
    )
    html = path.with_suffix(".html")
    fig.write_html(html, include_plotlyjs="cdn")
    return html


def print_summary(summaries: list[dict[str, Any]]) -> None:
    """The medians over seeds, one line."""
    if not summaries:
        return
    med = medians(summaries)
    print(
        f"\nmedian over {len(summaries)} seed(s): Kendall tau {med['kendall_tau']:.3f}, Spearman {med['spearman']:.3f} "
        f"(stand-alone vs its retest {med['kendall_retest']:.3f}, one-shot vs the mean of both "
        f"{med['kendall_tau_mean']:.3f}; stand-alone accuracies span {med['standalone_range']:.4f}) | "
        f"HV one-shot retrained {med['hv_one_shot_retrained']:.4g} vs train-each {med['hv_train_each']:.4g} "
        f"(one-shot scores, another fidelity: {med['hv_one_shot_scores']:.4g}) | epochs one-shot "
        f"{med['epochs_one_shot']:g}, train-each {med['epochs_train_each']:g} | seconds one-shot "
        f"{med['seconds_one_shot']:.0f}, train-each {med['seconds_train_each']:.0f}"
    )
