"""What each command of ``run_search.py`` does, behind the argument parsing."""

from __future__ import annotations

import json
import sys
from typing import Any

from spaces import get_space, space_names

from .cost import architecture_cost, cheapest_and_dearest

__all__ = ["flops_rows", "print_table", "space_rows"]


def flops_rows(space_name: str, uniform: str, width: float | None, num_classes: int = 10) -> list[dict[str, Any]]:
    """One row per uniform model: ``uniform`` is a value, ``dense`` or ``all``."""
    space = get_space(space_name, width=width, num_classes=num_classes)
    values = ["dense", *space.uniform_values()] if uniform == "all" else [uniform]
    rows = []
    for value in values:
        cost = architecture_cost(space.uniform(value))
        rows.append(
            {
                "space": space.name,
                "uniform": value,
                "mflops": round(cost.mflops, 4),
                "mflops_all_ops": round(cost.mflops_all_ops, 4),
                "params": cost.params,
            }
        )
    return rows


def space_rows(width: float | None, extra: list[str] | None = None) -> list[dict[str, Any]]:
    """Every built-in space (and any space files given) with its size and MFLOPs range."""
    rows = []
    for name in [*space_names(), *(extra or [])]:
        space = get_space(name, width=width)
        low, high = (architecture_cost(a).mflops for a in cheapest_and_dearest(space))
        rows.append(
            {
                "space": space.name,
                "model": space.model,
                "width": space.width,
                "layers": len(space.slots),
                "size": f"{space.size:.3g}",
                "mflops_min": round(low, 2),
                "mflops_max": round(high, 2),
                "description": space.description,
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], as_json: bool = False, out=sys.stdout) -> None:
    if as_json:
        print(json.dumps(rows, indent=2), file=out)
        return
    if not rows:
        return
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns).rstrip(), file=out)
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns).rstrip(), file=out)
