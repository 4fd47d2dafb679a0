"""The HTML tables and lists of the report page: the Pareto configurations, the published models
among the baselines and the failed trials."""

from __future__ import annotations

import html
import math
from typing import Any

from search.objectives import OBJECTIVES, Objective, describe
from search.reporting.configurations import Configuration, config_numbers
from search.reporting.report.records import (
    baseline_label,
    extra_objectives,
    front_sorted,
    layer_code,
    mflops,
    objective_value,
    published_model,
    slot_names,
)
from search.reporting.report.style import MAX_FAILED_ROWS
from search.storage import TrialRecord

__all__ = ["esc", "failed_table", "pareto_table", "published_note"]

_NONE = "–"  # a missing value in a table


def esc(value: Any) -> str:
    """``value`` as HTML text."""
    return html.escape(str(value))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any, objective: Objective) -> str:
    """A value of ``objective`` in its format, a dash when missing."""
    return _NONE if _missing(value) else objective.format(value)


def _table(header: list[str], rows: list[list[str]], left: set[int] = frozenset()) -> str:
    """An HTML table; cells are already escaped."""
    cls = lambda i: ' class="l"' if i in left else ""  # noqa: E731
    head = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def pareto_table(front: list[Configuration], objectives: list[str], wanted: int = 1) -> str:
    """The front, cheapest first: objectives (means over the runs), the runs and their sd,
    both MFLOPs counts, baseline and per-layer codes (✓: confirmed, with ``wanted`` runs)."""
    configs = {c.number: c for c in front}
    rows_records = front_sorted([c.record for c in front])
    if not rows_records:
        return '<p class="muted">No Pareto configuration yet: no trial has completed feasibly.</p>'
    names: list[str] = []
    for r in rows_records:
        if r.architecture is not None:
            for name in slot_names(r.architecture):
                if name not in names:
                    names.append(name)
    accuracy, cost, params = OBJECTIVES["accuracy"], OBJECTIVES["mflops"], OBJECTIVES["params"]
    extra = [describe(o) for o in extra_objectives(objectives)]
    header = [
        "trial",
        f"{accuracy.column_title} (mean)",
        "runs",
        "sd (points)",
        cost.column_title,
        "MFLOPs (all ops)",
        params.column_title,
        *[esc(o.column_title) for o in extra],
        "baseline",
        *map(esc, names),
    ]
    rows = []
    for r in rows_records:
        specs = dict(zip(slot_names(r.architecture), r.architecture.layers)) if r.architecture is not None else {}
        config = configs[r.number]
        sd = config.accuracy_sd
        rows.append(
            [
                f"#{r.number}",
                _fmt(r.values.get("accuracy"), accuracy),
                f"{config.runs_count}{' ✓' if wanted > 1 and config.runs_count >= wanted else ''}",
                _NONE if sd is None else f"{100 * sd:.2f}",
                _fmt(mflops(r), cost),
                _fmt(r.mflops_all_ops, cost),
                _fmt(r.params, params),
                *[_fmt(objective_value(r, o.name), o) for o in extra],
                esc(r.baseline) if r.baseline is not None else "",
                *[esc(layer_code(specs[n])) if n in specs else "" for n in names],
            ]
        )
    return _table(header, rows, left={7 + len(extra)})


def published_note(records: list[TrialRecord], configs: list[Configuration]) -> str:
    """One line per baseline that is a published model: what it is, its accuracy here (the mean
    of its runs), both FLOPs counts and which of them its paper's figure uses."""
    accuracy, cost = OBJECTIVES["accuracy"], OBJECTIVES["mflops"]
    by_number = {c.number: c for c in configs}
    numbers = config_numbers(records)
    seen: set[int] = set()
    items = []
    for r in sorted(records, key=lambda rec: rec.number):
        published = published_model(r.architecture) if r.baseline is not None else None
        number = numbers.get(r.number, r.number)
        if published is None or number in seen:
            continue
        seen.add(number)
        config = by_number.get(number)
        shown = config.record if config is not None else r
        value = shown.values.get("accuracy")
        runs = f" (mean of {config.runs_count} runs)" if config is not None and config.runs_count > 1 else ""
        measured = (f"{accuracy.label} {_fmt(value, accuracy)}{runs}, " if value is not None else "") + (
            f"{_fmt(mflops(shown), cost)} MFLOPs (paper), {_fmt(shown.mflops_all_ops, cost)} MFLOPs (all ops)"
        )
        items.append(
            f"<li>{esc(baseline_label(shown))} (trial #{shown.number}): {esc(published)}; here {measured}.</li>"
        )
    if not items:
        return ""
    return (
        '<p class="caption">Baselines that are published models (their papers trained them on CIFAR-10; '
        "compare their accuracy here only with this study's other trials):</p><ul>" + "".join(items) + "</ul>"
    )


def failed_table(records: list[TrialRecord]) -> str:
    """The failed trials with their cost, architecture and reason ("" when there is none)."""
    failed = [r for r in records if r.status == "failed"]
    if not failed:
        return ""
    cost = OBJECTIVES["mflops"]
    listed = sorted(failed, key=lambda rec: rec.number)[:MAX_FAILED_ROWS]
    rows = [
        [
            f"#{r.number}",
            _fmt(mflops(r), cost),
            esc(r.architecture.summary()) if r.architecture else "",
            esc(r.fail_reason or "(no reason recorded)"),
        ]
        for r in listed
    ]
    unplotted = sum(1 for r in failed if mflops(r) is None)
    note = f" {unplotted} of them have no recorded MFLOPs and are only listed here." if unplotted else ""
    if len(listed) < len(failed):
        note += f" The first {len(listed)} are listed; trials.csv has all {len(failed)} (status failed)."
    return (
        f'<h3>Failed trials ({len(failed)})</h3><p class="caption">Trials whose training failed have no '
        f"accuracy; those with a recorded cost are drawn at accuracy 0 above.{note}</p>"
        + _table(["trial", cost.label, "architecture", "reason"], rows, left={2, 3})
    )
