#!/usr/bin/env python
"""Latency-table benchmark: how well ``--latency table`` predicts the measured latency.

For each space, on this device, at ``--batch``:

1. the per-layer table is built (``search.evaluation.latency.LatencyTable.build``: every searchable
   layer in every choice, deployed alone, then calibrated on the whole dense and uniform
   models), timed;
2. ``--candidates`` random candidates of the space (seeded) and its uniform configurations
   are each predicted from the table and **measured twice** as whole deployed models
   (``search.evaluation.latency.model_latency_ms``, what ``--latency measured`` does), the two
   measurements at different times so that their disagreement shows the noise floor.

Reported per space, over the random candidates only (the uniform ones calibrated the table):

- ``median_abs_error_pct`` / ``p90_abs_error_pct``: |predicted - measured| / measured, with
  measured = the mean of the two measurements; ``bias_pct``: the median signed error
  (positive = the table over-predicts);
- ``noise_pct``: the median |m1 - m2| / mean of the two measurements: prediction errors
  below this are indistinguishable from timing noise;
- ``kendall_table`` / ``spearman_table``: rank correlation of prediction and measurement,
  what matters to a sampler (it only compares candidates); ``kendall_mflops``: the same for
  MFLOPs as the latency proxy, the baseline the table has to beat to be worth building;
- seconds to build the table against seconds per measured candidate.

Why the table can miss: it sums layers measured alone, so it cannot see the channel gathers
that deploying leaves between consecutive FLGC layers of different groupings, nor cache
effects between layers; the calibration (``fixed_ms + scale * sum``) removes what is common
to all candidates, not what differs between them.

    python bench/latency_table.py --out results/bench/latency_table.csv --candidates 30 --threads 1
    python bench/latency_table.py --quick   # smoke run (about a minute)
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from scipy import stats

from bench._timing import default_out, environment, load_warning, print_table, setup_threads, write_csv
from search.evaluation.cost import architecture_cost
from search.evaluation.latency import LatencyTable, model_latency_ms
from spaces import SearchSpace, get_space

CSV_COLUMNS = ("space", "candidate", "arch", "mflops", "predicted_ms", "measured_ms", "error_pct", "m1_ms", "m2_ms")
SUMMARY_COLUMNS = (
    "space",
    "batch",
    "candidates",
    "median_abs_error_pct",
    "p90_abs_error_pct",
    "bias_pct",
    "noise_pct",
    "kendall_table",
    "spearman_table",
    "kendall_mflops",
    "scale",
    "build_s",
    "measure_s",
)


class _RandomChoice:
    """The ``TrialLike`` a space samples from: uniform over each layer's choices."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self.rng.choice(list(choices))


def candidates_of(space: SearchSpace, count: int, seed: int) -> list[tuple[str, Any]]:
    """The uniform configurations, then ``count`` distinct random ones."""
    chosen = {f"uniform {value}": space.uniform(value) for value in space.uniform_values()}
    rng = random.Random(seed)
    seen = set(chosen.values())
    for _ in range(100 * count):
        if len(chosen) >= len(space.uniform_values()) + count:
            break
        arch = space.sample(_RandomChoice(rng))
        if arch not in seen:
            seen.add(arch)
            chosen[f"random {len(chosen) - len(space.uniform_values())}"] = arch
    return list(chosen.items())


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_space(space: SearchSpace, args: argparse.Namespace, device: torch.device) -> tuple[list[dict], dict]:
    start = time.perf_counter()
    table = LatencyTable.build(space, device, args.batch, repeats=args.repeats)
    build_s = time.perf_counter() - start
    rows, measure_s = [], []
    candidates = candidates_of(space, args.candidates, args.seed)
    measure = lambda arch: model_latency_ms(arch, device, args.batch, repeats=args.repeats)  # noqa: E731
    first = {}
    for name, arch in candidates:  # first pass over all, then the second: noise at different times
        start = time.perf_counter()
        first[name] = measure(arch)
        measure_s.append(time.perf_counter() - start)
    for name, arch in candidates:
        m1, m2 = first[name], measure(arch)
        measured = (m1 + m2) / 2
        predicted = table.predict(arch, space.slots)
        rows.append(
            {
                "space": space.name,
                "candidate": name,
                "arch": arch.summary(),
                "mflops": architecture_cost(arch).mflops,
                "predicted_ms": predicted,
                "measured_ms": measured,
                "m1_ms": m1,
                "m2_ms": m2,
                "error_pct": 100 * (predicted - measured) / measured,
                "noise_pct": 100 * abs(m1 - m2) / measured,
            }
        )
        print(
            f"  {space.name} {name:>11}: predicted {predicted:8.3f} ms, measured {m1:8.3f} / {m2:8.3f} ms", flush=True
        )
    # The uniform configurations calibrate the table: judge it on the random ones only.
    judged = [r for r in rows if r["candidate"].startswith("random")]
    errors = [r["error_pct"] for r in judged]
    predicted, measured, mflops = ([r[k] for r in judged] for k in ("predicted_ms", "measured_ms", "mflops"))
    summary = {
        "space": space.name,
        "batch": args.batch,
        "candidates": len(judged),
        "fixed_ms": table.fixed_ms,
        "scale": table.scale,
        "median_abs_error_pct": statistics.median(abs(e) for e in errors),
        "p90_abs_error_pct": _percentile([abs(e) for e in errors], 0.9),
        "bias_pct": statistics.median(errors),
        "noise_pct": statistics.median(r["noise_pct"] for r in judged),
        "kendall_table": stats.kendalltau(predicted, measured).statistic,
        "spearman_table": stats.spearmanr(predicted, measured).statistic,
        "kendall_mflops": stats.kendalltau(mflops, measured).statistic,
        "build_s": build_s,
        "measure_s": statistics.median(measure_s),
    }
    return rows, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--spaces", default="vgg_hetconv,vgg_flgc,mbv2_flgc", help="spaces (default: all built-in but mixed)"
    )
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (default: 1.0)")
    parser.add_argument("--batch", type=int, default=1, help="latency batch, as --latency-batch (default: 1)")
    parser.add_argument("--candidates", type=int, default=30, help="random candidates per space (default: 30)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (default: 20)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random candidates (default: 0)")
    parser.add_argument("--quick", action="store_true", help="smoke run: width 0.25, 4 candidates, 5 repeats")
    parser.add_argument("--out", default=None, help="CSV path (default: results/bench/latency_table_<time>.csv)")
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.candidates, args.repeats = 0.25, 4, 5
    try:
        spaces = [get_space(name.strip(), args.width) for name in args.spaces.split(",") if name.strip()]
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    setup_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = environment()
    print(
        f"latency-table benchmark on {device}: torch {env['torch']}, {env['threads']} threads, batch {args.batch}",
        flush=True,
    )
    if warning := load_warning():
        print(warning, file=sys.stderr, flush=True)

    rows, summaries = [], []
    for space in spaces:
        space_rows, summary = bench_space(space, args, device)
        rows += space_rows
        summaries.append(summary)
    print_table(summaries, SUMMARY_COLUMNS, title="\nprediction error of the latency table (errors in %)")
    out = write_csv(rows, Path(args.out) if args.out else default_out("latency_table"), CSV_COLUMNS)
    out.with_suffix(".json").write_text(
        json.dumps({"environment": env, "args": vars(args), "summary": summaries}, indent=1)
    )
    print(f"\n{len(rows)} rows written to {out} (summary: {out.with_suffix('.json')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
