"""``report.html``: the header of the study, then five sections, each a caption and its figure or
table. plotly.js is embedded once, with the first figure, so the page opens offline."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

import plotly.graph_objects as go
import plotly.io

from search.objectives import OBJECTIVES, describe
from search.reporting.report.data import ReportData
from search.reporting.report.figures import MAIN_COST, OTHER_COSTS
from search.reporting.report.scatter import drawn_trials
from search.reporting.report.style import MAX_FRONT_CURVES, MAX_FRONT_ROWS, MAX_HYPERVOLUME_MARKERS, PLOT_CONFIG
from search.reporting.report.tables import esc, failed_table, pareto_table, published_note
from search.reporting.report.verdicts import confirmation_text, noise_section
from search.reporting.resolution import runs_wanted
from search.storage import STATUSES, TrialRecord

__all__ = ["render_page"]

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
table.meta td { white-space: normal; }
.scroll { overflow-x: auto; }
.muted { color: #777; }
code { font-size: 0.9em; }
"""
_ONE_SHOT_NOTE = (
    " This is a one-shot study: blue points and the red front are one-shot scores (a candidate's"
    " accuracy with weights inherited from the trained supernet); purple diamonds and the dashed front"
    " are the configurations retrained from scratch (--retrain-top), measured like any stand-alone"
    " trial. The two fidelities are never mixed on one front."
)


def _status_counts(records: list[TrialRecord]) -> str:
    counts = Counter(r.status for r in records)
    order = list(STATUSES) + sorted(set(counts) - set(STATUSES))
    return f"{len(records)} trials: " + ", ".join(f"{counts.get(s, 0)} {s.replace('_', '-')}" for s in order)


def _box_side(name: str) -> str:
    """One side of the hypervolume's normalizing box, in words: ``(1 − ref accuracy)``, ``ref mflops``."""
    objective = OBJECTIVES[name]
    if objective.sense == "max":
        return f"({objective.ideal:g} − ref {name})"
    return f"ref {name}" if objective.ideal == 0 else f"(ref {name} − {objective.ideal:g})"


def _header(data: ReportData) -> str:
    attrs = data.study.user_attrs
    protocol = attrs.get("protocol") or {}
    dense = attrs.get("dense_cost") or {}
    cost, params = OBJECTIVES["mflops"], OBJECTIVES["params"]
    reference = data.reference
    ref_text = ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in reference.items())
    rows = [
        ("space", attrs.get("space_name", "?")),
        ("model", f"{attrs.get('model', '?')} at width {attrs.get('width', '?')}"),
        ("dataset", attrs.get("dataset", protocol.get("dataset", "?"))),
        ("objectives", ", ".join(f"{o} ({describe(o).sense})" for o in data.objectives)),
        ("trials", _status_counts(data.records)),
        (
            "configurations",
            f"{len(data.configs)} trained to the end, {sum(c.runs_count > 1 for c in data.configs)} of them more than once",
        ),
        ("seed-to-seed noise", data.noise.describe()),
        ("confirmation", confirmation_text(data)),
        ("reference point", ref_text or "none recorded"),
    ]
    if "epochs" in protocol:
        rows.append(("training", f"{protocol['epochs']} epochs per trial"))
    if dense:
        rows.append(
            (
                "dense model",
                f"{cost.format(dense.get('mflops', float('nan')))} MFLOPs (paper), "
                f"{cost.format(dense.get('mflops_all_ops', float('nan')))} MFLOPs (all ops), "
                f"{params.format(dense.get('params', 0))} params",
            )
        )
    if data.hv is None:
        rows.append(("hypervolume", "not available (no reference point)"))
    else:
        over = ", ".join(data.hv_objectives)
        rows.append(("hypervolume of the front (of the means)", f"{data.hv:.6g} (over {over})"))
        if data.hv_norm is not None:
            box = " × ".join(_box_side(o) for o in data.hv_objectives)
            rows.append(("normalized hypervolume", f"{data.hv_norm:.4f} (= hypervolume / [{box}]; 1 is the ideal)"))
    rows.append(("report written", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")))
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f'<h1>Study {esc(data.study.study_name)}</h1><table class="meta">{body}</table>'


@contextmanager
def _standard_json() -> Iterator[None]:
    """plotly writes a figure's JSON with orjson where that happens to be installed, else with
    the standard library, and the two differ (orjson keeps "·" as it is, json writes
    "\\u00b7"; numbers may take other forms): the figures always use the standard library's,
    so that the report is the same file whatever else is installed."""
    config = plotly.io.json.config
    before = config.default_engine
    config.default_engine = "json"
    try:
        yield
    finally:
        config.default_engine = before


def _figure_html(fig: go.Figure, first: bool, div_id: str) -> str:
    with _standard_json():
        return fig.to_html(
            full_html=False, include_plotlyjs=bool(first), include_mathjax=False, config=PLOT_CONFIG, div_id=div_id
        )


def _scale_notes(data: ReportData) -> dict[str, str]:
    """What the figures of a large study leave out, in words, by section (empty: nothing)."""
    notes = {}
    drawn = drawn_trials(data.records, data.configs, data.front)
    if drawn is not None:
        notes["scatter"] = (
            f" This study has {len(data.records):,} trials, more than a page draws well as markers: the scatter "
            f"draws {len(drawn):,} of them (every run of a front configuration and every baseline, and an even random "
            "sample of the others) over a density of all of them (the blue shading, darker where more trials lie; "
            "hover it for the count). trials.csv has every trial."
        )
    finished = sum(1 for r in data.records if r.state in ("COMPLETE", "PRUNED", "FAIL"))
    if data.hv_objectives and finished > MAX_HYPERVOLUME_MARKERS:
        notes["hypervolume"] = (
            f" With {finished:,} finished trials, markers are drawn only at the trials that changed the hypervolume "
            "(the staircase is the same)."
        )
    front = len(data.front_configs)
    for key, most in (("layers", MAX_FRONT_ROWS), ("curves", MAX_FRONT_CURVES)):
        if front > most:
            notes[key] = (
                f" The front has {front} configurations: {most} of them are shown, evenly spread along it by MFLOPs "
                "(the cheapest and the costliest among them); section 5 and pareto.csv list all of them."
            )
    return notes


def _sections(data: ReportData, rendered: dict[str, str]) -> list[str]:
    notes = _scale_notes(data)
    extra_scatters = "".join(
        f'<h3>Accuracy vs {esc(name)}</h3><p class="caption">The same trials against the {esc(name)} '
        f"objective; red points are on the Pareto front of all objectives.</p>{rendered[f'accuracy_vs_{name}']}"
        for name in OTHER_COSTS
        if f"accuracy_vs_{name}" in rendered
    )
    hv_caption = (
        f"Hypervolume of the front of the configurations' means (over {esc(', '.join(data.hv_objectives))}, "
        "reference point above) after each finished trial — ok, infeasible, failed or early-stopped, in "
        "order of completion — and against the time since the first trial started. A new configuration can "
        "only raise it; a further run of one moves its mean, so a confirmation run can also lower it (a lucky "
        "first run corrected). A flat tail means new trials stopped improving the front."
        if data.hv_objectives
        else "No reference point is recorded in the study, so no hypervolume can be computed."
    )
    front_note = (
        ""
        if set(data.objectives) == {"accuracy", MAIN_COST}
        else (
            " With more than two objectives, red points are the front of all objectives and the red step line "
            "the front of accuracy against MFLOPs alone."
        )
    )
    return [
        "<h2>1. Accuracy vs MFLOPs</h2>",
        '<p class="caption">Every trial: validation accuracy against MFLOPs (paper convention: conv and '
        "linear multiply-accumulates). Blue points are complete trials (every run of a configuration), the "
        "red step line joins the Pareto front of the configurations' means (higher accuracy and fewer MFLOPs "
        "are better), red open diamonds with error bars are configurations trained more than once (mean ± the "
        "sd of their runs), green squares are the uniform baselines, "
        "grey crosses are infeasible candidates (over the FLOPs ceiling, not trained), orange open circles "
        "early-stopped trials at their last validation accuracy, and brown triangles failed trials at "
        "accuracy 0. Hover a point for its MFLOPs in both conventions, parameters and per-layer choices."
        f"{front_note}{_ONE_SHOT_NOTE if data.retrained is not None else ''}{esc(notes.get('scatter', ''))}</p>",
        rendered[f"accuracy_vs_{MAIN_COST}"],
        published_note(data.records, data.configs),
        noise_section(data),
        extra_scatters,
        failed_table(data.records),
        "<h2>2. Hypervolume</h2>",
        f'<p class="caption">{hv_caption}{esc(notes.get("hypervolume", ""))}</p>',
        rendered["hypervolume"],
        "<h2>3. Per-layer choices of the Pareto configurations</h2>",
        '<p class="caption">One row per Pareto configuration, cheapest first, with its runs (✓: confirmed, it '
        "has the runs --confirm asks for; read the choices of unconfirmed rows as possibly lucky); one column "
        "per searchable layer. Cells show the choice (P = HetConv part, G = FLGC groups, D = dense; a trailing "
        "f marks free FLGC groups), coloured on a log2 scale of that number (dense = 1): larger numbers mean "
        f"cheaper layers.{esc(notes.get('layers', ''))}</p>",
        rendered["pareto_layers"],
        "<h2>4. Validation accuracy per epoch of the Pareto configurations</h2>",
        '<p class="caption">Per-epoch validation accuracy of each Pareto configuration (legend: its number; '
        "its further runs dotted, in its colour). The objective is the accuracy after the last epoch, not the "
        f"best epoch.{esc(notes.get('curves', ''))}</p>",
        rendered["pareto_curves"],
        "<h2>5. Pareto configurations</h2>",
        '<p class="caption">The front sorted by MFLOPs (also in <code>pareto.csv</code>; every trial is in '
        "<code>trials.csv</code>, with the configuration it ran). Accuracy is the mean over the runs, sd the sd "
        "of those runs. MFLOPs (all ops) adds BatchNorm, activations and pooling.</p>",
        pareto_table(data.front_configs, data.objectives, runs_wanted(data.confirm)),
    ]


def render_page(data: ReportData, figures: dict[str, go.Figure]) -> str:
    """The whole ``report.html``; ``figures`` as :func:`figures.report_figures` gives them."""
    rendered = {name: _figure_html(fig, i == 0, f"fig-{name}") for i, (name, fig) in enumerate(figures.items())}
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Study {esc(data.study.study_name)}: search report</title><style>{_CSS}</style></head>\n<body><main>"
        + _header(data)
        + "\n".join(_sections(data, rendered))
        + "</main></body></html>\n"
    )
