"""The report's plotly figures: the accuracy scatters (``scatter.py``), hypervolume over trials and
time, per-layer choices of the front and per-epoch curves of the front."""

from __future__ import annotations

import math
from datetime import datetime

import plotly.colors as plotly_colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from search.objectives import OBJECTIVES
from search.reporting.configurations import Configuration
from search.reporting.front import hypervolume_over_trials
from search.reporting.report.data import ReportData
from search.reporting.report.records import front_sorted, layer_code, layer_value, mflops, slot_names
from search.reporting.report.scatter import accuracy_figure
from search.reporting.report.style import (
    COLORS,
    MAX_FRONT_CURVES,
    MAX_FRONT_ROWS,
    MAX_HYPERVOLUME_MARKERS,
    TEMPLATE,
    empty_note,
    spread,
)
from search.reporting.resolution import runs_wanted
from search.storage import TrialRecord

__all__ = [
    "MAIN_COST",
    "OTHER_COSTS",
    "curves_figure",
    "hypervolume_figure",
    "layers_figure",
    "report_figures",
    "shown_front",
]

MAIN_COST = "mflops"  # the cost of the main scatter (every trial records it)
# the other costs get a scatter of their own in a study that optimizes them
OTHER_COSTS = tuple(o.name for o in OBJECTIVES.values() if o.sense == "min" and o.name != MAIN_COST)

_FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")


def _completion_key(record: TrialRecord) -> tuple:
    return (record.datetime_complete is None, record.datetime_complete or datetime.min, record.number)


def hypervolume_figure(records: list[TrialRecord], hv_objectives: list[str], reference: dict[str, float]) -> go.Figure:
    """Hypervolume of the front after each finished trial, and over wall-clock time."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("after each finished trial", "over wall-clock time"))
    fig.update_layout(template=TEMPLATE, height=420, showlegend=False, margin={"t": 60, "l": 60, "r": 20, "b": 60})
    fig.update_xaxes(title_text="finished trials", row=1, col=1)
    fig.update_xaxes(title_text="minutes since the first trial started", row=1, col=2)
    fig.update_yaxes(title_text="hypervolume", row=1, col=1)
    if not hv_objectives:
        return empty_note(fig, "no reference point: hypervolume not available")
    candidates, history = hypervolume_over_trials(records, hv_objectives, reference)
    hv_of = {r.number: float(v) for r, v in zip(candidates, history)}
    finished = sorted((r for r in records if r.state in _FINISHED_STATES), key=_completion_key)
    if not finished:
        return empty_note(fig, "no finished trial yet")
    starts = [r.datetime_start for r in records if r.datetime_start is not None]
    t0 = min(starts) if starts else None
    count, minutes, values, numbers = [], [], [], []
    current = 0.0
    for i, r in enumerate(finished, start=1):
        current = hv_of.get(r.number, current)
        count.append(i)
        values.append(current)
        numbers.append(r.number)
        if t0 is not None and r.datetime_complete is not None:
            minutes.append((r.datetime_complete - t0).total_seconds() / 60.0)
        else:
            minutes.append(None)
    if len(finished) > MAX_HYPERVOLUME_MARKERS:  # a marker where it changed: the same staircase
        keep = [i for i in range(len(values)) if i in (0, len(values) - 1) or values[i] != values[i - 1]]
        count, values, numbers, minutes = ([column[i] for i in keep] for column in (count, values, numbers, minutes))
    hover = "trial #%{customdata}<br>hypervolume %{y:.5g}<extra></extra>"

    def staircase(x: list, y: list, trials: list) -> go.Scatter:
        return go.Scatter(
            x=x,
            y=y,
            customdata=trials,
            mode="lines+markers",
            line={"shape": "hv", "color": COLORS["ok"]},
            marker={"size": 5},
            hovertemplate=hover,
            name="hypervolume",
        )

    fig.add_trace(staircase(count, values, numbers), row=1, col=1)
    timed = [(m, v, n) for m, v, n in zip(minutes, values, numbers) if m is not None]
    if timed:
        x, y, trials = (list(column) for column in zip(*timed))
        fig.add_trace(staircase(x, y, trials), row=1, col=2)
    return fig


def _front_label(config: Configuration, wanted: int) -> str:
    """``#23 · 5.7 MFLOPs · 3 runs ✓`` (✓: confirmed, it has the runs --confirm asks for)."""
    record = config.record
    value = mflops(record)
    label = f"#{record.number} · {value:.1f} {OBJECTIVES[MAIN_COST].unit}" if value is not None else f"#{record.number}"
    runs = f"{config.runs_count} run{'s' if config.runs_count != 1 else ''}"
    return f"{label} · {runs}{' ✓' if wanted > 1 and config.runs_count >= wanted else ''}"


def shown_front(front: list[Configuration], most: int) -> list[TrialRecord]:
    """The front's records cheapest first; beyond ``most``, that many evenly spread along it."""
    return spread(front_sorted([c.record for c in front]), most)


def layers_figure(front: list[Configuration], wanted: int = 1) -> go.Figure:
    """Heatmap of the front's per-layer choices: one row per configuration, cheapest first,
    labelled with its runs (✓ where it has the ``wanted`` runs of a confirmed configuration);
    at most :data:`MAX_FRONT_ROWS` rows, evenly spread along a larger front."""
    fig = go.Figure()
    fig.update_layout(template=TEMPLATE)
    configs = {c.number: c for c in front}
    rows = [r for r in shown_front(front, MAX_FRONT_ROWS) if r.architecture is not None]
    if not rows:
        fig.update_layout(height=300)
        return empty_note(fig, "no Pareto configuration yet")
    names: list[str] = []
    for r in rows:
        for name in slot_names(r.architecture):
            if name not in names:
                names.append(name)
    z, text, hover = [], [], []
    for r in rows:
        specs = dict(zip(slot_names(r.architecture), r.architecture.layers))
        z.append([math.log2(layer_value(specs[n])) if n in specs else None for n in names])
        text.append([layer_code(specs[n]) if n in specs else "" for n in names])
        hover.append([f"#{r.number} · {n}: {specs[n].label}" if n in specs else "" for n in names])
    top = max(1, int(math.ceil(max(v for row in z for v in row if v is not None))))
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=names,
            y=[_front_label(configs[r.number], wanted) for r in rows],
            text=text,
            texttemplate="%{text}",
            customdata=hover,
            hovertemplate="%{customdata}<extra></extra>",
            colorscale="Viridis",
            zmin=0,
            zmax=top,
            xgap=1,
            ygap=1,
            colorbar={
                "title": {"text": "P / G"},
                "tickvals": list(range(top + 1)),
                "ticktext": [str(2**k) for k in range(top + 1)],
            },
        )
    )
    fig.update_layout(
        height=max(300, 120 + 30 * len(rows)),
        yaxis={"autorange": "reversed", "type": "category"},
        xaxis={"type": "category", "tickangle": -45 if len(names) > 14 else 0},
        margin={"t": 30, "l": 150, "r": 20, "b": 90},
    )
    return fig


def curves_figure(front: list[Configuration]) -> go.Figure:
    """Per-epoch validation accuracy of every run of each configuration of the front (its runs
    share a colour and a legend entry); at most :data:`MAX_FRONT_CURVES` configurations, evenly
    spread along a larger front."""
    fig = go.Figure()
    fig.update_layout(
        template=TEMPLATE,
        height=440,
        xaxis_title="epoch",
        yaxis_title=OBJECTIVES["accuracy"].axis_title,
        margin={"t": 30, "l": 60, "r": 20, "b": 60},
        legend={"title": {"text": "trial"}},
        xaxis={"tickformat": "d", "rangemode": "tozero"},
    )
    configs = {c.number: c for c in front}
    palette = plotly_colors.qualitative.Plotly
    for index, first in enumerate(shown_front(front, MAX_FRONT_CURVES)):
        color = palette[index % len(palette)]
        for k, r in enumerate(configs[first.number].runs):
            points = [
                (e.get("epoch"), e.get("val_accuracy"))
                for e in r.curve
                if isinstance(e, dict) and e.get("epoch") is not None and e.get("val_accuracy") is not None
            ]
            if not points:
                continue
            name = f"#{first.number}" if k == 0 else f"#{first.number}, run {k + 1} (trial #{r.number})"
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in points],
                    y=[p[1] for p in points],
                    mode="lines+markers",
                    marker={"size": 4, "color": color},
                    line={"color": color, "dash": "solid" if k == 0 else "dot"},
                    name=name,
                    legendgroup=f"#{first.number}",
                    showlegend=k == 0,
                    hovertemplate=f"{name}<br>epoch %{{x}}<br>val. accuracy %{{y:.4f}}<extra></extra>",
                )
            )
    if not fig.data:
        empty_note(fig, "no Pareto configuration with a training curve yet")
    return fig


def report_figures(data: ReportData) -> dict[str, go.Figure]:
    """The report's figures by file name (``accuracy_vs_mflops`` ...), in the page's order."""
    figures = {
        f"accuracy_vs_{MAIN_COST}": accuracy_figure(
            data.records, data.configs, data.front, data.objectives, MAIN_COST, data.retrained
        ),
    }
    for name in OTHER_COSTS:
        if name in data.objectives:
            figures[f"accuracy_vs_{name}"] = accuracy_figure(
                data.records, data.configs, data.front, data.objectives, name
            )
    figures["hypervolume"] = hypervolume_figure(data.records, data.hv_objectives, data.reference)
    figures["pareto_layers"] = layers_figure(data.front_configs, runs_wanted(data.confirm))
    figures["pareto_curves"] = curves_figure(data.front_configs)
    return figures
