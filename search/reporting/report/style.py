"""The look every figure of the report shares: colours of the series, plotly template and config,
and the note a figure shows when it has nothing to draw."""

from __future__ import annotations

import plotly.graph_objects as go

__all__ = ["COLORS", "PLOT_CONFIG", "TEMPLATE", "empty_note"]

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


def empty_note(fig: go.Figure, text: str) -> go.Figure:
    """``fig`` with ``text`` in its middle (a figure with nothing to draw yet)."""
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font={"size": 15})
    return fig
