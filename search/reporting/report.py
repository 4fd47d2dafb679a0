"""The report of a study: one self-contained HTML page, two CSV tables and optional PNGs.

Everything is read back from the study storage through :func:`search.storage.load_records`
(never from the in-memory state of a run), so a report can be rebuilt after a crash, on
another machine, or while a search is still running.

``write_report(study, out_dir)`` writes into ``out_dir``:

- ``report.html``: one file that opens offline (plotly.js is embedded inline, once; no CDN
  link, no external resource). Sections: accuracy vs MFLOPs of every trial with the Pareto
  front, hypervolume over trials and over wall-clock time, per-layer choices of the Pareto
  configurations, their per-epoch validation accuracy, and a table of them.
- ``trials.csv``: one row per trial (:func:`trials_frame`).
- ``pareto.csv``: the Pareto front only, sorted by MFLOPs.
- ``figures/*.png``: the same figures as images, when a Chromium is available for kaleido.
"""

from __future__ import annotations

import functools
import html
import math
import shutil
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from models import Architecture, LayerSpec, get_model_family
from search.compat import study_storage
from search.reporting.front import front_hypervolume, hypervolume_over_trials, pareto_records
from search.reporting.pareto import pareto_mask
from search.storage import OBJECTIVE_SENSES, STATUSES, TrialRecord, load_records, study_objectives

__all__ = ["ReportFiles", "layer_code", "layer_value", "trials_frame", "write_report"]

_COLORS = {
    "ok": "#1f77b4",
    "front": "#d62728",
    "baseline": "#2ca02c",
    "infeasible": "#9a9a9a",
    "failed": "#8c564b",
    "early_stopped": "#ff7f0e",
    "retrained": "#9467bd",
}
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
_TEMPLATE = "plotly_white"
_FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")
_NO_CHROME = (
    "PNG figures skipped: no Chromium found (apt-get install chromium, or plotly_get_chrome); "
    "the HTML report has every figure"
)


@dataclass
class ReportFiles:
    html: Path
    trials_csv: Path
    pareto_csv: Path
    pngs: list[Path]  # empty when no Chromium
    png_notice: str | None  # one-line notice when PNGs could not be written


# ---------------------------------------------------------------------------------------------
# per-layer helpers
# ---------------------------------------------------------------------------------------------
def layer_value(spec: LayerSpec) -> int:
    """The cost-relevant number of a layer choice: HetConv part P, FLGC groups G, dense 1."""
    if spec.type == "hetconv":
        return int(spec.part or 1)
    if spec.type == "flgc":
        return int(spec.groups or 1)
    return 1


def layer_code(spec: LayerSpec) -> str:
    """Short text of a layer choice: ``P4`` (HetConv part 4), ``G8`` (FLGC groups 8; ``G8f``
    when the groups are free/unbalanced) or ``D`` (dense)."""
    if spec.type == "hetconv":
        return f"P{spec.part}"
    if spec.type == "flgc":
        return f"G{spec.groups}" + ("" if spec.balanced else "f")
    if spec.type == "dense":
        return "D"
    return spec.label


@functools.lru_cache(maxsize=16)
def _family_slot_names(model: str, width: float) -> tuple[str, ...]:
    try:
        return tuple(slot.name for slot in get_model_family(model).slots(width))
    except Exception:  # noqa: BLE001  (an unknown model must not break a report)
        return ()


def _slot_names(arch: Architecture) -> list[str]:
    names = list(_family_slot_names(arch.model, arch.width))
    if len(names) != len(arch.layers):
        names = [f"layer{i + 1:02d}" for i in range(len(arch.layers))]
    return names


def _baseline_label(record: TrialRecord) -> str:
    """Text label of a baseline: ``P4``, ``G8``, ``dense`` or its name (``flgc-paper``)."""
    arch = record.architecture
    if arch is not None and arch.layers and len(set(arch.layers)) == 1:
        spec = arch.layers[0]
        return "dense" if spec.type == "dense" else layer_code(spec)
    return str(record.baseline)


# Published models among the baselines: what they are and which FLOPs convention their paper's
# figure uses, so that a reader compares it with the right column.
_HETCONV_PAPER = (
    "the HetConv paper's VGG-16 with P = {part} (Singh et al., CVPR 2019; its FLOPs are "
    "conv multiply-accumulates: compare with MFLOPs (paper))"
)
_FLGC_PAPER = (
    "the FLGC paper's MobileNetV2, 8 groups on the 17 projection convs, expansion convs dense "
    "(Wang et al., CVPR 2019; its reference code's table gives 62.6 MFLOPs at width 1, the "
    "all-ops count: compare with MFLOPs (all ops))"
)


def published_model(arch: Architecture | None) -> str | None:
    """Which published model ``arch`` is, with its FLOPs convention, or None."""
    if arch is None or not arch.layers:
        return None
    specs = set(arch.layers)
    if arch.model == "vgg16" and len(specs) == 1 and arch.layers[0].type == "hetconv":
        return _HETCONV_PAPER.format(part=arch.layers[0].part)
    if arch.model == "mobilenetv2":
        names = _family_slot_names(arch.model, arch.width)
        dense = (LayerSpec.dense(), LayerSpec.flgc(1))
        if len(names) == len(arch.layers) and all(
            spec == LayerSpec.flgc(8) if name.endswith("_project") else spec in dense
            for name, spec in zip(names, arch.layers)
        ):
            return _FLGC_PAPER
    return None


def _layer_lines(arch: Architecture | None, per_line: int = 4) -> str:
    if arch is None:
        return ""
    labels = [spec.label for spec in arch.layers]
    return "<br>".join(" ".join(labels[i : i + per_line]) for i in range(0, len(labels), per_line))


def _last_val_accuracy(record: TrialRecord) -> float | None:
    for entry in reversed(record.curve):
        value = entry.get("val_accuracy") if isinstance(entry, dict) else None
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            return float(value)
    return None


def _objective_value(record: TrialRecord, name: str) -> float | None:
    """An objective's value of a record: its recorded value, else the matching attribute."""
    if name in record.values:
        return float(record.values[name])
    if name == "mflops":
        return record.mflops
    if name == "params":
        return None if record.params is None else float(record.params)
    value = record.user_attrs.get(name)
    return float(value) if isinstance(value, (int, float)) else None


def _mflops(record: TrialRecord) -> float | None:
    if record.mflops is not None:
        return float(record.mflops)
    value = record.values.get("mflops")
    return None if value is None else float(value)


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
_BASE_COLUMNS = [
    "number",
    "state",
    "status",
    "baseline",
    "accuracy",
    "last_val_accuracy",
    "mflops",
    "mflops_all_ops",
    "params",
]
_TAIL_COLUMNS = [
    "epochs_run",
    "train_seconds",
    "device",
    "seed",
    "datetime_start",
    "datetime_complete",
    "fail_reason",
    "on_front",
    "architecture",
]


def trials_frame(records: list[TrialRecord], objectives: list[str]) -> pd.DataFrame:
    """One row per trial (by trial number).

    Columns: number, state, status, baseline, accuracy (NaN when the trial has no values),
    last_val_accuracy (last epoch of the curve, also for early-stopped trials), mflops,
    mflops_all_ops, params, the other objectives' values, epochs_run, train_seconds, device,
    seed, datetime_start, datetime_complete, fail_reason, on_front, architecture (compact
    labels, e.g. ``hetconv:4 hetconv:2 ...``), one column per searchable layer named after it
    (``conv02`` ... with the layer's label) and ``hp_*`` columns for tuned hyperparameters.
    """
    extra_objectives = [o for o in objectives if o not in ("accuracy", "mflops", "params")]
    front = {r.number for r in pareto_records(records, objectives)}
    layer_columns: list[str] = []
    hp_columns: list[str] = []
    rows = []
    for r in sorted(records, key=lambda rec: rec.number):
        row: dict[str, Any] = {
            "number": r.number,
            "state": r.state,
            "status": r.status,
            "baseline": r.baseline,
            "accuracy": _num(r.values.get("accuracy")),
            "last_val_accuracy": _num(_last_val_accuracy(r)),
            "mflops": _num(_mflops(r)),
            "mflops_all_ops": _num(r.mflops_all_ops),
            "params": _num(r.params if r.params is not None else r.values.get("params")),
        }
        for name in extra_objectives:
            row[name] = _num(_objective_value(r, name))
        row.update(
            epochs_run=r.epochs_run,
            train_seconds=_num(r.train_seconds),
            device=r.device,
            seed=r.seed,
            datetime_start=r.datetime_start,
            datetime_complete=r.datetime_complete,
            fail_reason=r.fail_reason,
            on_front=r.number in front,
            architecture=r.architecture.summary() if r.architecture is not None else None,
        )
        if r.architecture is not None:
            for name, spec in zip(_slot_names(r.architecture), r.architecture.layers):
                if name not in layer_columns:
                    layer_columns.append(name)
                row[name] = spec.label
        for key, value in r.hyperparameters.items():
            column = f"hp_{key}"
            if column not in hp_columns:
                hp_columns.append(column)
            row[column] = value
        rows.append(row)
    columns = _BASE_COLUMNS + extra_objectives + _TAIL_COLUMNS
    layer_columns = [c for c in layer_columns if c not in columns]
    frame = pd.DataFrame(rows, columns=columns + layer_columns + hp_columns)
    frame["on_front"] = frame["on_front"].astype(bool)
    return frame


# ---------------------------------------------------------------------------------------------
# hypervolume
# ---------------------------------------------------------------------------------------------
def _hv_objectives(objectives: list[str], reference: dict[str, float]) -> list[str]:
    """Objectives with a reference value (latency has none: it is left out of the hypervolume)."""
    return [o for o in objectives if o in reference and o in OBJECTIVE_SENSES]


def _hv_box(objectives: list[str], reference: dict[str, float]) -> float | None:
    """Volume of the box between the reference point and the ideal point (accuracy 1, costs 0)."""
    volume = 1.0
    for o in objectives:
        side = (1.0 - reference[o]) if o == "accuracy" else (reference[o] if OBJECTIVE_SENSES[o] == "min" else None)
        if side is None or side <= 0:
            return None
        volume *= side
    return volume


def _completion_key(record: TrialRecord) -> tuple:
    return (record.datetime_complete is None, record.datetime_complete or datetime.min, record.number)


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def _hover(record: TrialRecord, objectives: list[str]) -> str:
    head = f"<b>trial #{record.number}</b> · {record.status}"
    if record.baseline is not None:
        head += f" · baseline {html.escape(str(record.baseline))}"
    lines = [head]
    published = published_model(record.architecture) if record.baseline is not None else None
    if published:
        lines.append(html.escape(published.split(" (")[0]))
    accuracy = record.values.get("accuracy")
    if accuracy is None and record.status == "early_stopped":
        last = _last_val_accuracy(record)
        epoch = f" (epoch {record.epochs_run})" if record.epochs_run else ""
        lines.append(f"last val accuracy {last:.4f}{epoch}" if last is not None else "accuracy n/a")
    else:
        lines.append(f"accuracy {accuracy:.4f}" if accuracy is not None else "accuracy n/a")
    mflops = _mflops(record)
    if mflops is not None:
        all_ops = f"{record.mflops_all_ops:.2f}" if record.mflops_all_ops is not None else "n/a"
        lines.append(f"MFLOPs {mflops:.2f} (paper) · {all_ops} (all ops)")
    if record.params is not None:
        lines.append(f"params {int(record.params):,}")
    for name in objectives:
        if name not in ("accuracy", "mflops", "params"):
            value = _objective_value(record, name)
            if value is not None:
                lines.append(f"{name} {value:.4g}")
    if record.fail_reason:
        lines.append("reason: " + html.escape(str(record.fail_reason))[:120])
    layers = _layer_lines(record.architecture)
    if layers:
        lines.append(layers)
    return "<br>".join(lines)


def _empty_note(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font={"size": 15})
    return fig


def _scatter(records, x_of, y_of, objectives, **kwargs) -> go.Scatter | None:
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


def _front_2d(records: list[TrialRecord], x_of) -> list[TrialRecord]:
    """Records non-dominated in (max accuracy, min x), sorted by x: the step line's corners."""
    pts = [(r, r.values.get("accuracy"), x_of(r)) for r in records if r.feasible_complete]
    pts = [(r, a, x) for r, a, x in pts if a is not None and x is not None]
    if not pts:
        return []
    mask = pareto_mask([[a, x] for _, a, x in pts], ("max", "min"))
    kept = [(r, a, x) for (r, a, x), keep in zip(pts, mask) if keep]
    return [r for r, _, _ in sorted(kept, key=lambda t: (t[2], t[1]))]


def _accuracy_figure(
    records: list[TrialRecord],
    front: list[TrialRecord],
    objectives: list[str],
    x_name: str,
    x_title: str,
    retrained: list[TrialRecord] | None = None,
) -> go.Figure:
    """Accuracy against a cost (MFLOPs, params or latency) of every trial, with the front."""
    if x_name == "mflops":
        x_of = _mflops
    else:

        def x_of(r: TrialRecord) -> float | None:
            return _objective_value(r, x_name)

    fig = go.Figure()
    by_status: dict[str, list[TrialRecord]] = {}
    for r in records:
        by_status.setdefault(r.status, []).append(r)
    ok = by_status.get("ok", [])
    traces = [
        _scatter(
            [r for r in ok if r.baseline is None],
            x_of,
            lambda r: r.values.get("accuracy"),
            objectives,
            mode="markers",
            name="trials (ok)",
            marker={"symbol": "circle", "size": 7, "color": _COLORS["ok"], "opacity": 0.65},
        ),
        _scatter(
            by_status.get("early_stopped", []),
            x_of,
            lambda r: _last_val_accuracy(r) or 0.0,
            objectives,
            mode="markers",
            name="early-stopped (last val. accuracy)",
            marker={"symbol": "circle-open", "size": 8, "color": _COLORS["early_stopped"], "line": {"width": 2}},
        ),
        _scatter(
            by_status.get("infeasible", []),
            x_of,
            lambda r: r.values.get("accuracy", 0.0),
            objectives,
            mode="markers",
            name="infeasible (over the FLOPs ceiling)",
            marker={"symbol": "x", "size": 8, "color": _COLORS["infeasible"]},
        ),
        _scatter(
            by_status.get("failed", []),
            x_of,
            lambda r: 0.0,
            objectives,
            mode="markers",
            name="failed (plotted at accuracy 0)",
            marker={"symbol": "triangle-down", "size": 9, "color": _COLORS["failed"]},
        ),
    ]
    for trace in traces:
        if trace is not None:
            fig.add_trace(trace)
    corners = _front_2d(records, x_of)
    if corners:
        fig.add_trace(
            go.Scatter(
                x=[x_of(r) for r in corners],
                y=[r.values["accuracy"] for r in corners],
                mode="lines",
                line={"shape": "hv", "color": _COLORS["front"], "width": 2},
                name="Pareto front",
                legendgroup="front",
                hoverinfo="skip",
            )
        )
    trace = _scatter(
        front,
        x_of,
        lambda r: r.values.get("accuracy"),
        objectives,
        mode="markers",
        name="Pareto front",
        legendgroup="front",
        showlegend=not corners,
        marker={"symbol": "circle", "size": 11, "color": _COLORS["front"], "line": {"width": 1, "color": "white"}},
    )
    if trace is not None:
        fig.add_trace(trace)
    baselines = [
        r for r in ok if r.baseline is not None and x_of(r) is not None and r.values.get("accuracy") is not None
    ]
    on_front = {r.number for r in front}
    trace = _scatter(
        baselines,
        x_of,
        lambda r: r.values.get("accuracy"),
        objectives,
        mode="markers+text",
        name="baselines (published models: see below)"
        if any(published_model(r.architecture) for r in baselines)
        else "uniform baselines",
        text=[_baseline_label(r) for r in baselines],
        textposition="top center",
        marker={
            "symbol": "square",
            "size": 10,
            "color": _COLORS["baseline"],
            "line": {
                "width": [2 if r.number in on_front else 1 for r in baselines],
                "color": [_COLORS["front"] if r.number in on_front else "white" for r in baselines],
            },
        },
    )
    if trace is not None:
        fig.add_trace(trace)
    if retrained:  # one-shot study: its retrained configurations, a front of their own
        done = [r for r in retrained if r.feasible_complete and x_of(r) is not None]
        retrained_front = {r.number for r in pareto_records(done, objectives)}
        trace = _scatter(
            done,
            x_of,
            lambda r: r.values.get("accuracy"),
            objectives,
            mode="markers",
            name="retrained from scratch (stand-alone accuracy)",
            marker={
                "symbol": "diamond",
                "size": [12 if r.number in retrained_front else 8 for r in done],
                "color": _COLORS["retrained"],
                "line": {"width": 1, "color": "white"},
            },
        )
        if trace is not None:
            fig.add_trace(trace)
        corners = _front_2d(done, x_of)
        if corners:
            fig.add_trace(
                go.Scatter(
                    x=[x_of(r) for r in corners],
                    y=[r.values["accuracy"] for r in corners],
                    mode="lines",
                    line={"shape": "hv", "color": _COLORS["retrained"], "width": 2, "dash": "dash"},
                    name="retrained front",
                    hoverinfo="skip",
                )
            )
    fig.update_layout(
        template=_TEMPLATE,
        height=560,
        xaxis_title=x_title,
        yaxis_title="validation accuracy",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
        margin={"t": 60, "l": 60, "r": 20, "b": 60},
    )
    if not fig.data:
        _empty_note(fig, "no trial with a cost to plot yet")
    return fig


def _hypervolume_figure(records: list[TrialRecord], hv_objectives: list[str], reference: dict[str, float]) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("after each finished trial", "over wall-clock time"))
    fig.update_layout(template=_TEMPLATE, height=420, showlegend=False, margin={"t": 60, "l": 60, "r": 20, "b": 60})
    fig.update_xaxes(title_text="finished trials", row=1, col=1)
    fig.update_xaxes(title_text="minutes since the first trial started", row=1, col=2)
    fig.update_yaxes(title_text="hypervolume", row=1, col=1)
    if not hv_objectives:
        return _empty_note(fig, "no reference point: hypervolume not available")
    candidates, history = hypervolume_over_trials(records, hv_objectives, reference)
    hv_of = {r.number: float(v) for r, v in zip(candidates, history)}
    finished = sorted((r for r in records if r.state in _FINISHED_STATES), key=_completion_key)
    if not finished:
        return _empty_note(fig, "no finished trial yet")
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
    hover = "trial #%{customdata}<br>hypervolume %{y:.5g}<extra></extra>"
    fig.add_trace(
        go.Scatter(
            x=count,
            y=values,
            customdata=numbers,
            mode="lines+markers",
            line={"shape": "hv", "color": _COLORS["ok"]},
            marker={"size": 5},
            hovertemplate=hover,
            name="hypervolume",
        ),
        row=1,
        col=1,
    )
    timed = [(m, v, n) for m, v, n in zip(minutes, values, numbers) if m is not None]
    if timed:
        fig.add_trace(
            go.Scatter(
                x=[t[0] for t in timed],
                y=[t[1] for t in timed],
                customdata=[t[2] for t in timed],
                mode="lines+markers",
                line={"shape": "hv", "color": _COLORS["ok"]},
                marker={"size": 5},
                hovertemplate=hover,
                name="hypervolume",
            ),
            row=1,
            col=2,
        )
    return fig


def _front_sorted(front: list[TrialRecord]) -> list[TrialRecord]:
    return sorted(front, key=lambda r: (_mflops(r) if _mflops(r) is not None else math.inf, r.number))


def _front_label(record: TrialRecord) -> str:
    mflops = _mflops(record)
    return f"#{record.number} · {mflops:.1f} MFLOPs" if mflops is not None else f"#{record.number}"


def _layers_figure(front: list[TrialRecord]) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(template=_TEMPLATE)
    rows = [r for r in _front_sorted(front) if r.architecture is not None]
    if not rows:
        fig.update_layout(height=300)
        return _empty_note(fig, "no Pareto configuration yet")
    names: list[str] = []
    for r in rows:
        for name in _slot_names(r.architecture):
            if name not in names:
                names.append(name)
    z, text, hover = [], [], []
    for r in rows:
        specs = dict(zip(_slot_names(r.architecture), r.architecture.layers))
        z.append([math.log2(layer_value(specs[n])) if n in specs else None for n in names])
        text.append([layer_code(specs[n]) if n in specs else "" for n in names])
        hover.append([f"#{r.number} · {n}: {specs[n].label}" if n in specs else "" for n in names])
    top = max(1, int(math.ceil(max(v for row in z for v in row if v is not None))))
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=names,
            y=[_front_label(r) for r in rows],
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


def _curves_figure(front: list[TrialRecord]) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(
        template=_TEMPLATE,
        height=440,
        xaxis_title="epoch",
        yaxis_title="validation accuracy",
        margin={"t": 30, "l": 60, "r": 20, "b": 60},
        legend={"title": {"text": "trial"}},
        xaxis={"tickformat": "d", "rangemode": "tozero"},
    )
    for r in _front_sorted(front):
        points = [
            (e.get("epoch"), e.get("val_accuracy"))
            for e in r.curve
            if isinstance(e, dict) and e.get("epoch") is not None and e.get("val_accuracy") is not None
        ]
        if points:
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in points],
                    y=[p[1] for p in points],
                    mode="lines+markers",
                    marker={"size": 4},
                    name=f"#{r.number}",
                    hovertemplate=f"#{r.number}<br>epoch %{{x}}<br>val. accuracy %{{y:.4f}}<extra></extra>",
                )
            )
    if not fig.data:
        _empty_note(fig, "no Pareto configuration with a training curve yet")
    return fig


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------
_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0; color: #222;
       background: #fafafa; }
main { max-width: 1200px; margin: 0 auto; padding: 20px 28px 60px; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 2.2em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
p.caption { color: #555; font-size: 0.92em; max-width: 60em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; }
td.l, th.l { text-align: left; }
table.meta td, table.meta th { text-align: left; }
.scroll { overflow-x: auto; }
.muted { color: #777; }
code { font-size: 0.9em; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def _table(header: list[str], rows: list[list[str]], left: set[int] = frozenset()) -> str:
    """An HTML table; cells are already escaped."""
    cls = lambda i: ' class="l"' if i in left else ""  # noqa: E731
    head = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _pareto_table(front: list[TrialRecord], objectives: list[str]) -> str:
    rows_records = _front_sorted(front)
    if not rows_records:
        return '<p class="muted">No Pareto configuration yet: no trial has completed feasibly.</p>'
    names: list[str] = []
    for r in rows_records:
        if r.architecture is not None:
            for name in _slot_names(r.architecture):
                if name not in names:
                    names.append(name)
    extra = [o for o in objectives if o not in ("accuracy", "mflops", "params")]
    header = [
        "trial",
        "accuracy",
        "MFLOPs (paper)",
        "MFLOPs (all ops)",
        "params",
        *map(_esc, extra),
        "baseline",
        *map(_esc, names),
    ]
    rows = []
    for r in rows_records:
        specs = dict(zip(_slot_names(r.architecture), r.architecture.layers)) if r.architecture is not None else {}
        rows.append(
            [
                f"#{r.number}",
                _fmt(r.values.get("accuracy")),
                _fmt(_mflops(r), ".2f"),
                _fmt(r.mflops_all_ops, ".2f"),
                _fmt(int(r.params), ",d") if r.params is not None else "–",
                *[_fmt(_objective_value(r, o), ".4g") for o in extra],
                _esc(r.baseline) if r.baseline is not None else "",
                *[_esc(layer_code(specs[n])) if n in specs else "" for n in names],
            ]
        )
    return _table(header, rows, left={5 + len(extra)})


def _published_note(records: list[TrialRecord]) -> str:
    """One line per baseline that is a published model: what it is, its accuracy here, both
    FLOPs counts and which of them its paper's figure uses."""
    items = []
    for r in sorted(records, key=lambda rec: rec.number):
        published = published_model(r.architecture) if r.baseline is not None else None
        if published is None:
            continue
        accuracy = r.values.get("accuracy")
        measured = (f"accuracy {_fmt(accuracy)}, " if accuracy is not None else "") + (
            f"{_fmt(_mflops(r), '.2f')} MFLOPs (paper), {_fmt(r.mflops_all_ops, '.2f')} MFLOPs (all ops)"
        )
        items.append(f"<li>{_esc(_baseline_label(r))} (trial #{r.number}): {_esc(published)}; here {measured}.</li>")
    if not items:
        return ""
    return (
        '<p class="caption">Baselines that are published models (their papers trained them on CIFAR-10; '
        "compare their accuracy here only with this study's other trials):</p><ul>" + "".join(items) + "</ul>"
    )


def _failed_table(records: list[TrialRecord]) -> str:
    failed = [r for r in records if r.status == "failed"]
    if not failed:
        return ""
    rows = [
        [
            f"#{r.number}",
            _fmt(_mflops(r), ".2f"),
            _esc(r.architecture.summary()) if r.architecture else "",
            _esc(r.fail_reason or "(no reason recorded)"),
        ]
        for r in sorted(failed, key=lambda rec: rec.number)
    ]
    unplotted = sum(1 for r in failed if _mflops(r) is None)
    note = f" {unplotted} of them have no recorded MFLOPs and are only listed here." if unplotted else ""
    return (
        f'<h3>Failed trials ({len(failed)})</h3><p class="caption">Trials whose training failed have no '
        f"accuracy; those with a recorded cost are drawn at accuracy 0 above.{note}</p>"
        + _table(["trial", "MFLOPs", "architecture", "reason"], rows, left={2, 3})
    )


def _status_counts(records: list[TrialRecord]) -> str:
    counts = Counter(r.status for r in records)
    order = list(STATUSES) + sorted(set(counts) - set(STATUSES))
    return f"{len(records)} trials: " + ", ".join(f"{counts.get(s, 0)} {s.replace('_', '-')}" for s in order)


def _header(study: optuna.Study, records, objectives, reference, hv_objectives, hv, hv_norm) -> str:
    attrs = study.user_attrs
    protocol = attrs.get("protocol") or {}
    dense = attrs.get("dense_cost") or {}
    ref_text = ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in reference.items())
    rows = [
        ("space", attrs.get("space_name", "?")),
        ("model", f"{attrs.get('model', '?')} at width {attrs.get('width', '?')}"),
        ("dataset", attrs.get("dataset", protocol.get("dataset", "?"))),
        ("objectives", ", ".join(f"{o} ({OBJECTIVE_SENSES.get(o, '?')})" for o in objectives)),
        ("trials", _status_counts(records)),
        ("reference point", ref_text or "none recorded"),
    ]
    if "epochs" in protocol:
        rows.append(("training", f"{protocol['epochs']} epochs per trial"))
    if dense:
        rows.append(
            (
                "dense model",
                f"{dense.get('mflops', float('nan')):.2f} MFLOPs (paper), "
                f"{dense.get('mflops_all_ops', float('nan')):.2f} MFLOPs (all ops), "
                f"{int(dense.get('params', 0)):,} params",
            )
        )
    if hv is None:
        rows.append(("hypervolume", "not available (no reference point)"))
    else:
        over = ", ".join(hv_objectives)
        rows.append(("hypervolume of the front", f"{hv:.6g} (over {over})"))
        if hv_norm is not None:
            box = " × ".join("(1 − ref accuracy)" if o == "accuracy" else f"ref {o}" for o in hv_objectives)
            rows.append(("normalized hypervolume", f"{hv_norm:.4f} (= hypervolume / [{box}]; 1 is the ideal)"))
    rows.append(("report written", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")))
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<h1>Study {_esc(study.study_name)}</h1><table class="meta">{body}</table>'


def _figure_html(fig: go.Figure, first: bool, div_id: str) -> str:
    return fig.to_html(
        full_html=False, include_plotlyjs=bool(first), include_mathjax=False, config=_PLOT_CONFIG, div_id=div_id
    )


# ---------------------------------------------------------------------------------------------
# PNGs
# ---------------------------------------------------------------------------------------------
def _find_chromium() -> str | None:
    try:
        from choreographer.browsers.chromium import Chromium

        found = Chromium.find_browser(skip_local=False)
        if found:
            return str(found)
    except Exception:  # noqa: BLE001  (best effort: fall back to PATH)
        pass
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _write_pngs(figures: dict[str, go.Figure], folder: Path) -> tuple[list[Path], str | None]:
    """Write every figure as a PNG with kaleido in one browser session; on the first error stop
    and return a one-line notice."""
    try:
        import kaleido
    except ImportError:
        return [], "PNG figures skipped: kaleido is not installed (pip install kaleido); the HTML report has them all"
    folder.mkdir(parents=True, exist_ok=True)
    specs = []
    for name, fig in figures.items():
        height = fig.layout.height or 500
        specs.append(
            {
                "fig": fig.to_dict(),
                "path": folder / f"{name}.png",
                "opts": {"format": "png", "width": 1100, "height": height, "scale": 2},
            }
        )
    try:
        kaleido.write_fig_from_object_sync(specs, kopts={"mathjax": False, "timeout": 60}, cancel_on_error=True)
    except Exception as err:  # noqa: BLE001  (any failure of the browser only costs the PNGs)
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        written = [s["path"] for s in specs if s["path"].is_file()]
        return written, f"PNG figures not written: kaleido failed ({reason}); the HTML report has every figure"
    written = [s["path"] for s in specs if s["path"].is_file()]
    missing = len(specs) - len(written)
    return written, (
        f"PNG figures: {missing} of {len(specs)} were not written; the HTML report has every figure"
        if missing
        else None
    )


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------
_ONE_SHOT_NOTE = (
    " This is a one-shot study: blue points and the red front are one-shot scores (a candidate's"
    " accuracy with weights inherited from the trained supernet); purple diamonds and the dashed front"
    " are the configurations retrained from scratch (--retrain-top), measured like any stand-alone"
    " trial. The two fidelities are never mixed on one front."
)


def _retrained_records(study: optuna.Study) -> list[TrialRecord] | None:
    """For a one-shot study, the stand-alone trials that retrained its configurations."""
    name = study.user_attrs.get("retrained_study")
    if not name:
        return None
    try:
        linked = optuna.load_study(study_name=name, storage=study_storage(study))
    except KeyError:
        return []
    return [r for r in load_records(linked) if r.user_attrs.get("from_one_shot") is not None]


def write_report(study: optuna.Study, out_dir: Path, png: bool | None = None) -> ReportFiles:
    """Write ``report.html``, ``trials.csv``, ``pareto.csv`` (and ``figures/*.png`` when a
    Chromium is available, or ``png=True``) into ``out_dir``, reading everything from the
    study's storage. ``png=False`` never tries to write PNGs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = load_records(study)
    objectives = study_objectives(study)
    reference = {
        k: float(v)
        for k, v in dict(study.user_attrs.get("reference_point") or {}).items()
        if isinstance(v, (int, float))
    }
    front = pareto_records(records, objectives)

    frame = trials_frame(records, objectives)
    trials_csv = out_dir / "trials.csv"
    frame.to_csv(trials_csv, index=False)
    pareto = frame[frame["on_front"]].sort_values(["mflops", "accuracy", "number"], ascending=[True, False, True])
    pareto_csv = out_dir / "pareto.csv"
    pareto.to_csv(pareto_csv, index=False)

    hv_objectives = _hv_objectives(objectives, reference)
    hv = hv_norm = None
    if hv_objectives:
        hv = front_hypervolume(records, hv_objectives, reference)
        box = _hv_box(hv_objectives, reference)
        hv_norm = hv / box if box else None

    retrained = _retrained_records(study)
    figures: dict[str, go.Figure] = {
        "accuracy_vs_mflops": _accuracy_figure(
            records, front, objectives, "mflops", "MFLOPs (multiply-accumulates, paper convention)", retrained
        ),
    }
    for name, title in (("params", "parameters"), ("latency_ms", "latency (ms)")):
        if name in objectives:
            figures[f"accuracy_vs_{name}"] = _accuracy_figure(records, front, objectives, name, title)
    figures["hypervolume"] = _hypervolume_figure(records, hv_objectives, reference)
    figures["pareto_layers"] = _layers_figure(front)
    figures["pareto_curves"] = _curves_figure(front)

    rendered = {name: _figure_html(fig, i == 0, f"fig-{name}") for i, (name, fig) in enumerate(figures.items())}
    extra_scatters = "".join(
        f'<h3>Accuracy vs {_esc(name)}</h3><p class="caption">The same trials against the {_esc(name)} '
        f"objective; red points are on the Pareto front of all objectives.</p>{rendered[f'accuracy_vs_{name}']}"
        for name in ("params", "latency_ms")
        if f"accuracy_vs_{name}" in rendered
    )
    hv_caption = (
        f"Hypervolume of the front of complete, feasible trials (over {_esc(', '.join(hv_objectives))}, "
        "reference point above) after each finished trial — ok, infeasible, failed or early-stopped, in "
        "order of completion — and against the time since the first trial started. It never decreases; "
        "a flat tail means new trials stopped improving the front."
        if hv_objectives
        else "No reference point is recorded in the study, so no hypervolume can be computed."
    )
    front_note = (
        ""
        if set(objectives) == {"accuracy", "mflops"}
        else (
            " With more than two objectives, red points are the front of all objectives and the red step line "
            "the front of accuracy against MFLOPs alone."
        )
    )
    sections = [
        "<h2>1. Accuracy vs MFLOPs</h2>",
        '<p class="caption">Every trial: validation accuracy against MFLOPs (paper convention: conv and '
        "linear multiply-accumulates). Blue points are complete trials, the red step line joins the Pareto "
        "front (higher accuracy and fewer MFLOPs are better), green squares are the uniform baselines, "
        "grey crosses are infeasible candidates (over the FLOPs ceiling, not trained), orange open circles "
        "early-stopped trials at their last validation accuracy, and brown triangles failed trials at "
        "accuracy 0. Hover a point for its MFLOPs in both conventions, parameters and per-layer choices."
        f"{front_note}{_ONE_SHOT_NOTE if retrained is not None else ''}</p>",
        rendered["accuracy_vs_mflops"],
        _published_note(records),
        extra_scatters,
        _failed_table(records),
        "<h2>2. Hypervolume</h2>",
        f'<p class="caption">{hv_caption}</p>',
        rendered["hypervolume"],
        "<h2>3. Per-layer choices of the Pareto configurations</h2>",
        '<p class="caption">One row per Pareto configuration, cheapest first; one column per searchable layer. '
        "Cells show the choice (P = HetConv part, G = FLGC groups, D = dense; a trailing f marks free FLGC "
        "groups), coloured on a log2 scale of that number (dense = 1): larger numbers mean cheaper layers.</p>",
        rendered["pareto_layers"],
        "<h2>4. Validation accuracy per epoch of the Pareto configurations</h2>",
        '<p class="caption">Per-epoch validation accuracy of each Pareto trial (legend: trial number). '
        "The objective is the accuracy after the last epoch, not the best epoch.</p>",
        rendered["pareto_curves"],
        "<h2>5. Pareto configurations</h2>",
        '<p class="caption">The front sorted by MFLOPs (also in <code>pareto.csv</code>; every trial is in '
        "<code>trials.csv</code>). MFLOPs (all ops) adds BatchNorm, activations and pooling.</p>",
        _pareto_table(front, objectives),
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Study {_esc(study.study_name)}: search report</title><style>{_CSS}</style></head>\n<body><main>"
        + _header(study, records, objectives, reference, hv_objectives, hv, hv_norm)
        + "\n".join(sections)
        + "</main></body></html>\n"
    )
    html_path = out_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")

    pngs: list[Path] = []
    notice: str | None = None
    if png is not False:
        if png is None and _find_chromium() is None:
            notice = _NO_CHROME
        else:
            pngs, notice = _write_pngs(figures, out_dir / "figures")
    return ReportFiles(html=html_path, trials_csv=trials_csv, pareto_csv=pareto_csv, pngs=pngs, png_notice=notice)
