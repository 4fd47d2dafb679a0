"""The report's main figure: accuracy against a cost (MFLOPs, params or latency) of every trial,
one series per status, the Pareto front as a step line, the baselines and, for a one-shot study,
the retrained configurations with their own front. A study of more than
:data:`~search.reporting.report.style.MAX_POINTS` trials is drawn as a density of every trial
with a sample of them as markers (every front member and baseline among them)."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import numpy as np
import plotly.graph_objects as go

from models import Architecture
from search.objectives import OBJECTIVES, describe
from search.reporting.configurations import Configuration
from search.reporting.front import pareto_records
from search.reporting.pareto import pareto_mask
from search.reporting.report.records import (
    baseline_label,
    extra_objectives,
    last_val_accuracy,
    mflops,
    objective_value,
    published_model,
)
from search.reporting.report.style import COLORS, MAX_POINTS, TEMPLATE, empty_note
from search.storage import TrialRecord

__all__ = ["accuracy_figure", "drawn_trials"]

ValueOf = Callable[[TrialRecord], "float | None"]


def _layer_lines(arch: Architecture | None, per_line: int = 4) -> str:
    if arch is None:
        return ""
    labels = [spec.label for spec in arch.layers]
    return "<br>".join(" ".join(labels[i : i + per_line]) for i in range(0, len(labels), per_line))


def _hover(record: TrialRecord, objectives: list[str]) -> str:
    """A point's hover text: trial, status, baseline, objectives, failure and per-layer choices."""
    head = f"<b>trial #{record.number}</b> · {record.status}"
    if record.baseline is not None:
        head += f" · baseline {html.escape(str(record.baseline))}"
    lines = [head]
    published = published_model(record.architecture) if record.baseline is not None else None
    if published:
        lines.append(html.escape(published.split(" (")[0]))
    acc = OBJECTIVES["accuracy"]
    accuracy = record.values.get("accuracy")
    if accuracy is None and record.status == "early_stopped":
        last = last_val_accuracy(record)
        epoch = f" (epoch {record.epochs_run})" if record.epochs_run else ""
        lines.append(f"last val {acc.label} {acc.format(last)}{epoch}" if last is not None else f"{acc.label} n/a")
    else:
        lines.append(f"{acc.label} {acc.format(accuracy)}" if accuracy is not None else f"{acc.label} n/a")
    cost = OBJECTIVES["mflops"]
    value = mflops(record)
    if value is not None:
        all_ops = cost.format(record.mflops_all_ops) if record.mflops_all_ops is not None else "n/a"
        lines.append(f"{cost.label} {cost.format(value)} (paper) · {all_ops} (all ops)")
    if record.params is not None:
        params = OBJECTIVES["params"]
        lines.append(f"{params.label} {params.format(record.params)}")
    for name in extra_objectives(objectives):
        value, objective = objective_value(record, name), describe(name)
        if value is not None:
            lines.append(f"{objective.label} {objective.format(value)}")
    if record.fail_reason:
        lines.append("reason: " + html.escape(str(record.fail_reason))[:120])
    layers = _layer_lines(record.architecture)
    if layers:
        lines.append(layers)
    return "<br>".join(lines)


def _scatter(
    records: list[TrialRecord], x_of: ValueOf, y_of: ValueOf, objectives: list[str], **kwargs: Any
) -> go.Scatter | None:
    """Markers of the records with both coordinates, with hover texts; None when there is none."""
    points = [(x_of(r), y_of(r), r) for r in records]
    points = [(x, y, r) for x, y, r in points if x is not None and y is not None]
    if not points:
        return None
    return go.Scatter(
        x=[p[0] for p in points],
        y=[p[1] for p in points],
        hovertext=[_hover(p[2], objectives) for p in points],
        hovertemplate="%{hovertext}<extra></extra>",
        **kwargs,
    )


def _front_2d(records: list[TrialRecord], x_of: ValueOf) -> list[TrialRecord]:
    """Records non-dominated in (max accuracy, min x), sorted by x: the step line's corners."""
    pts = [(r, r.values.get("accuracy"), x_of(r)) for r in records if r.feasible_complete]
    pts = [(r, a, x) for r, a, x in pts if a is not None and x is not None]
    if not pts:
        return []
    mask = pareto_mask([[a, x] for _, a, x in pts], ("max", "min"))
    kept = [(r, a, x) for (r, a, x), keep in zip(pts, mask) if keep]
    return [r for r, _, _ in sorted(kept, key=lambda t: (t[2], t[1]))]


def _step_line(corners: list[TrialRecord], x_of: ValueOf, line: dict, **kwargs: Any) -> go.Scatter:
    return go.Scatter(
        x=[x_of(r) for r in corners],
        y=[r.values["accuracy"] for r in corners],
        mode="lines",
        line={"shape": "hv", **line},
        **kwargs,
        hoverinfo="skip",
    )


def _accuracy(record: TrialRecord) -> float | None:
    return record.values.get("accuracy")


def _last_or_zero(record: TrialRecord) -> float:
    return last_val_accuracy(record) or 0.0


def _accuracy_or_zero(record: TrialRecord) -> float:
    return record.values.get("accuracy", 0.0)


def _zero(record: TrialRecord) -> float:
    return 0.0


# One series per trial status: (status, its accuracy on the plot, name, marker).
_SERIES: tuple[tuple[str, ValueOf, str, dict[str, Any]], ...] = (
    ("ok", _accuracy, "trials (ok)", {"symbol": "circle", "size": 7, "color": COLORS["ok"], "opacity": 0.65}),
    (
        "early_stopped",
        _last_or_zero,
        "early-stopped (last val. accuracy)",
        {"symbol": "circle-open", "size": 8, "color": COLORS["early_stopped"], "line": {"width": 2}},
    ),
    (
        "infeasible",
        _accuracy_or_zero,
        "infeasible (over the FLOPs ceiling)",
        {"symbol": "x", "size": 8, "color": COLORS["infeasible"]},
    ),
    (
        "failed",
        _zero,
        "failed (plotted at accuracy 0)",
        {"symbol": "triangle-down", "size": 9, "color": COLORS["failed"]},
    ),
)


def _series_records(by_status: dict[str, list[TrialRecord]], status: str) -> list[TrialRecord]:
    records = by_status.get(status, [])
    return [r for r in records if r.baseline is None] if status == "ok" else records


def _status_traces(
    by_status: dict[str, list[TrialRecord]], x_of: ValueOf, objectives: list[str], drawn: set[int] | None = None
) -> list:
    """One series per trial status: ok (not baselines), early-stopped, infeasible, failed;
    with ``drawn``, only those trials (a sample of a large study: the names say how many)."""
    traces = []
    for status, y_of, name, marker in _SERIES:
        records = _series_records(by_status, status)
        if drawn is not None:
            shown = [r for r in records if r.number in drawn]
            if len(shown) < len(records):
                name = f"{name}: {len(shown):,} of {len(records):,} drawn"
            records = shown
        traces.append(_scatter(records, x_of, y_of, objectives, mode="markers", name=name, marker=marker))
    return traces


def drawn_trials(records: list[TrialRecord], configs: list[Configuration], front: list[TrialRecord]) -> set[int] | None:
    """The trials a scatter of a large study draws as markers (None: every one): beyond
    :data:`MAX_POINTS` trials, every run of a front configuration and every baseline, and an
    even random sample (seeded: the same report every time) of the others up to that many."""
    plotted = [r for r in records if r.status in {status for status, *_ in _SERIES}]
    if len(plotted) <= MAX_POINTS:
        return None
    front_numbers = {r.number for r in front}
    kept = {r.number for c in configs if c.number in front_numbers for r in c.runs}
    kept |= {r.number for r in plotted if r.baseline is not None}
    others = sorted(r.number for r in plotted if r.number not in kept)
    room = max(0, MAX_POINTS - len(kept))
    if room < len(others):
        chosen = np.random.default_rng(0).choice(len(others), size=room, replace=False)
        others = [others[i] for i in sorted(chosen.tolist())]
    return kept | set(others)


def _density_trace(by_status: dict[str, list[TrialRecord]], x_of: ValueOf) -> go.Histogram2d:
    """Every trial of a large study as a density behind the sample drawn as markers."""
    xs, ys = [], []
    for status, y_of, _, _ in _SERIES:
        for r in _series_records(by_status, status):
            x, y = x_of(r), y_of(r)
            if x is not None and y is not None:
                xs.append(x)
                ys.append(y)
    return go.Histogram2d(
        x=xs,
        y=ys,
        nbinsx=80,
        nbinsy=50,
        colorscale=[[0.0, "rgba(31,119,180,0)"], [1e-9, "rgba(31,119,180,0.12)"], [1.0, "rgba(31,119,180,0.85)"]],
        showscale=False,
        name=f"density of all {len(xs):,} trials",
        showlegend=True,
        hovertemplate="%{z} trials<extra></extra>",
    )


def _baselines_trace(
    ok: list[TrialRecord], front: list[TrialRecord], x_of: ValueOf, objectives: list[str]
) -> go.Scatter | None:
    """The baselines as labelled squares, outlined in red when on the front."""
    baselines = [r for r in ok if r.baseline is not None and x_of(r) is not None and _accuracy(r) is not None]
    on_front = {r.number for r in front}
    return _scatter(
        baselines,
        x_of,
        _accuracy,
        objectives,
        mode="markers+text",
        name="baselines (published models: see below)"
        if any(published_model(r.architecture) for r in baselines)
        else "uniform baselines",
        text=[baseline_label(r) for r in baselines],
        textposition="top center",
        marker={
            "symbol": "square",
            "size": 10,
            "color": COLORS["baseline"],
            "line": {
                "width": [2 if r.number in on_front else 1 for r in baselines],
                "color": [COLORS["front"] if r.number in on_front else "white" for r in baselines],
            },
        },
    )


def _means_trace(configs: list[Configuration], x_of: ValueOf, objectives: list[str]) -> go.Scatter | None:
    """Configurations with several runs: their mean, with error bars of ± the sd of their runs."""
    repeated = [c for c in configs if c.runs_count > 1 and x_of(c.record) is not None]
    if not repeated:
        return None
    return go.Scatter(
        x=[x_of(c.record) for c in repeated],
        y=[c.accuracy for c in repeated],
        error_y={"type": "data", "array": [c.accuracy_sd for c in repeated], "visible": True, "thickness": 1.5},
        mode="markers",
        name="configurations run several times: mean ± sd of their runs",
        marker={"symbol": "diamond-open", "size": 9, "color": COLORS["front"], "line": {"width": 1.5}},
        hovertext=[
            _hover(c.record, objectives)
            + f"<br><b>mean of {c.runs_count} runs</b> (sd {100 * (c.accuracy_sd or 0):.2f} points): "
            + ", ".join(f"#{r.number} {r.values['accuracy']:.4f}" for r in c.runs)
            for c in repeated
        ],
        hovertemplate="%{hovertext}<extra></extra>",
    )


def _retrained_traces(retrained: list[TrialRecord], x_of: ValueOf, objectives: list[str]) -> list:
    """A one-shot study's retrained configurations (diamonds, larger on their own front) and the
    step line of their front."""
    done = [r for r in retrained if r.feasible_complete and x_of(r) is not None]
    retrained_front = {r.number for r in pareto_records(done, objectives)}
    traces = [
        _scatter(
            done,
            x_of,
            _accuracy,
            objectives,
            mode="markers",
            name="retrained from scratch (stand-alone accuracy)",
            marker={
                "symbol": "diamond",
                "size": [12 if r.number in retrained_front else 8 for r in done],
                "color": COLORS["retrained"],
                "line": {"width": 1, "color": "white"},
            },
        )
    ]
    corners = _front_2d(done, x_of)
    if corners:
        line = {"color": COLORS["retrained"], "width": 2, "dash": "dash"}
        traces.append(_step_line(corners, x_of, line, name="retrained front"))
    return traces


def accuracy_figure(
    records: list[TrialRecord],
    configs: list[Configuration],
    front: list[TrialRecord],
    objectives: list[str],
    x_name: str,
    retrained: list[TrialRecord] | None = None,
) -> go.Figure:
    """Accuracy against the cost objective ``x_name`` of every trial (every run), with the
    front of the configurations' means (``front``, ``configs``) and error bars where a
    configuration has several runs."""
    if x_name == "mflops":
        x_of: ValueOf = mflops
    else:

        def x_of(r: TrialRecord) -> float | None:
            return objective_value(r, x_name)

    fig = go.Figure()
    by_status: dict[str, list[TrialRecord]] = {}
    for r in records:
        by_status.setdefault(r.status, []).append(r)
    drawn = drawn_trials(records, configs, front)
    traces: list = [] if drawn is None else [_density_trace(by_status, x_of)]
    traces += _status_traces(by_status, x_of, objectives, drawn)
    front_numbers = {r.number for r in front}
    shown_configs = configs if drawn is None else [c for c in configs if c.number in drawn or c.number in front_numbers]
    traces.append(_means_trace(shown_configs, x_of, objectives))
    corners = _front_2d([c.record for c in configs], x_of)
    if corners:
        line = {"color": COLORS["front"], "width": 2}
        traces.append(_step_line(corners, x_of, line, name="Pareto front", legendgroup="front"))
    front_marker = {"symbol": "circle", "size": 11, "color": COLORS["front"], "line": {"width": 1, "color": "white"}}
    traces.append(
        _scatter(
            front,
            x_of,
            _accuracy,
            objectives,
            mode="markers",
            name="Pareto front",
            legendgroup="front",
            showlegend=not corners,
            marker=front_marker,
        )
    )
    traces.append(_baselines_trace(by_status.get("ok", []), front, x_of, objectives))
    if retrained:  # one-shot study: its retrained configurations, a front of their own
        traces += _retrained_traces(retrained, x_of, objectives)
    for trace in traces:
        if trace is not None:
            fig.add_trace(trace)
    fig.update_layout(
        template=TEMPLATE,
        height=560,
        xaxis_title=describe(x_name).axis_title,
        yaxis_title=OBJECTIVES["accuracy"].axis_title,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
        margin={"t": 60, "l": 60, "r": 20, "b": 60},
    )
    if not fig.data:
        empty_note(fig, "no trial with a cost to plot yet")
    return fig
