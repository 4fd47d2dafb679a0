"""The objectives a search can optimize: one table that the settings, the storage and the report
read, so that an objective's direction, unit and titles are written once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["OBJECTIVES", "OBJECTIVE_SENSES", "Objective", "describe"]


@dataclass(frozen=True)
class Objective:
    """One objective: its name (the key in a trial's values and in the CSVs), ``sense`` ("max" or
    "min"), ``unit`` (empty when it has none), the titles the report gives its axis and its column
    of the Pareto table, the label and format of its value in hover texts and tables, its ideal
    value (the corner of the hypervolume's normalizing box) and whether every trial records it
    whatever the study's objectives (then the CSVs always have its column)."""

    name: str
    sense: str
    unit: str
    axis_title: str
    column_title: str
    label: str
    fmt: str
    ideal: float
    always_recorded: bool

    def format(self, value: Any) -> str:
        """``value`` with the objective's format (an integer format takes the integer part)."""
        return format(int(value) if self.fmt.endswith("d") else value, self.fmt)


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective(
            name="accuracy",
            sense="max",
            unit="",
            axis_title="validation accuracy",
            column_title="accuracy",
            label="accuracy",
            fmt=".4f",
            ideal=1.0,
            always_recorded=True,
        ),
        Objective(
            name="mflops",
            sense="min",
            unit="MFLOPs",
            axis_title="MFLOPs (multiply-accumulates, paper convention)",
            column_title="MFLOPs (paper)",
            label="MFLOPs",
            fmt=".2f",
            ideal=0.0,
            always_recorded=True,
        ),
        Objective(
            name="params",
            sense="min",
            unit="",
            axis_title="parameters",
            column_title="params",
            label="params",
            fmt=",d",
            ideal=0.0,
            always_recorded=True,
        ),
        # measured only when it is an objective
        Objective(
            name="latency_ms",
            sense="min",
            unit="ms",
            axis_title="latency (ms)",
            column_title="latency_ms",
            label="latency_ms",
            fmt=".4g",
            ideal=0.0,
            always_recorded=False,
        ),
    )
}
# Direction of every objective the tool knows.
OBJECTIVE_SENSES: dict[str, str] = {o.name: o.sense for o in OBJECTIVES.values()}


def describe(name: str) -> Objective:
    """The table's entry of an objective; for a name the table lacks (a study written by another
    version of the tool), a plain one: titled by its name, sense "?", four significant digits."""
    known = OBJECTIVES.get(name)
    if known is not None:
        return known
    return Objective(name, "?", "", name, name, name, ".4g", float("nan"), always_recorded=False)
