"""The look every figure of the report shares: colours of the series, plotly template and config,
the note a figure shows when it has nothing to draw, and how much a figure draws of a large
study (a browser draws a few thousand markers with hover texts well, not tens of thousands)."""

from __future__ import annotations

import plotly.graph_objects as go

__all__ = [
    "COLORS",
    "MAX_FAILED_ROWS",
    "MAX_FRONT_CURVES",
    "MAX_FRONT_ROWS",
    "MAX_HYPERVOLUME_MARKERS",
    "MAX_POINTS",
    "PLOT_CONFIG",
    "TEMPLATE",
    "empty_note",
    "spread",
]

COLORS = {
    "ok": "#1f77b4",
    "front": "#d62728",
    "baseline": "#2ca02c",
    "infeasible": "#9a9a9a",
    "failed": "#8c564b",
    "early_stopped": "#ff7f0e",
    "retrained": "#9467bd",
}
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
TEMPLATE = "plotly_white"

# A scatter draws at most this many trials as markers (every front member, baseline and
# configuration run several times besides); beyond it, a sample of the others, over a density
# of all of them.
MAX_POINTS = 2000
# The hypervolume figure marks every finished trial up to this many; beyond, only the trials
# that changed the hypervolume (the staircase is the same).
MAX_HYPERVOLUME_MARKERS = 2000
# The per-layer view and the per-epoch curves show at most this many front configurations,
# evenly spread along the front by MFLOPs; the table and pareto.csv have them all.
MAX_FRONT_ROWS = 60
MAX_FRONT_CURVES = 30
# The failed-trials table lists at most this many (trials.csv has every one).
MAX_FAILED_ROWS = 50


def empty_note(fig: go.Figure, text: str) -> go.Figure:
    """``fig`` with ``text`` in its middle (a figure with nothing to draw yet)."""
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font={"size": 15})
    return fig


def spread(items: list, k: int) -> list:
    """At most ``k`` of ``items`` (sorted already), evenly spread, both ends included."""
    if len(items) <= k:
        return list(items)
    if k <= 1:
        return list(items[:k])
    step = (len(items) - 1) / (k - 1)
    return [items[round(i * step)] for i in range(k)]
