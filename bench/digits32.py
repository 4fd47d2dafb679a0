#!/usr/bin/env python
"""Does ``digits32`` separate architectures? Two cheap checks with the quick preset's recipe.

* ``--mode baselines``: uniform models of a space (``--values``, default every uniform value)
  trained stand-alone for ``--seeds`` seeds; validation accuracy and MFLOPs per run.
* ``--mode retest``: ``--candidates`` uniformly random candidates of the space, each trained
  twice from different seeds; Kendall tau between the two runs says whether training ranks
  candidates consistently at all (on ``digits`` it was 0.08: noise). Unlike
  ``bench/one_shot.py --retest`` it needs no supernet.

``--recipe key=value`` overrides a field of :class:`search.evaluation.digits32.Digits32Recipe`
(calibration only; the shipped task is the default recipe). Results are appended to
``--out`` (CSV), one row per training run.

    python bench/digits32.py --mode baselines --space vgg_hetconv --seeds 2 --threads 1
    python bench/digits32.py --mode retest --space vgg_hetconv --candidates 20 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import random
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLUMNS = ("mode", "space", "name", "seed", "accuracy", "mflops", "seconds", "recipe")
RETEST_SEED_OFFSET = 7_919  # the second training of a candidate


def _recipe(overrides: list[str]):
    """The default recipe with ``key=value`` overrides (tuples as ``low,high``)."""
    import search.evaluation.digits32 as d32

    changes = {}
    fields = {f.name: f for f in dataclasses.fields(d32.Digits32Recipe)}
    for item in overrides:
        key, _, text = item.partition("=")
        if key not in fields:
            raise SystemExit(f"error: unknown recipe field {key!r}; fields: {', '.join(fields)}")
        default = getattr(d32.RECIPE, key)
        if isinstance(default, tuple):
            changes[key] = tuple(float(v) for v in text.split(","))
        else:
            changes[key] = type(default)(text)
    return dataclasses.replace(d32.RECIPE, **changes)


def _training(args: argparse.Namespace):
    from search.settings import PRESETS, TrainingSettings

    quick = PRESETS["quick"]
    return TrainingSettings(
        dataset="digits32",
        data_dir=args.data_dir,
        epochs=args.epochs,
        batch_size=quick["batch_size"],
        lr=args.lr or quick["lr"],
        warmup_epochs=quick["warmup_epochs"],
        threads=args.threads,
    )


def random_candidates(space, count: int, seed: int) -> list:
    """``count`` distinct uniformly random candidates of ``space`` (seeded)."""
    from models import Architecture

    rng = random.Random(seed)
    chosen: list = []
    while len(chosen) < count:
        arch = Architecture(space.model, space.width, space.num_classes, tuple(rng.choice(c) for c in space.choices))
        if arch not in chosen:
            chosen.append(arch)
    return chosen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("baselines", "retest"), default="baselines")
    p.add_argument("--space", default="vgg_hetconv")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--values", default=None, help="uniform values, comma-separated (default: all)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--seed-start", type=int, default=0, help="baselines: seeds start..seeds-1 (to extend a run)")
    p.add_argument("--candidates", type=int, default=20)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=None, help="default: the quick preset's")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="bench/results/digits32.csv")
    args = p.parse_args(argv)

    import torch
    from scipy import stats

    import search.evaluation.digits32 as d32
    from search.evaluation.evaluate import evaluate
    from spaces import get_space

    torch.set_num_threads(args.threads)
    d32.RECIPE = _recipe(args.recipe)
    recipe_text = " ".join(args.recipe)
    training = _training(args)
    space = get_space(args.space, width=args.width)
    if args.mode == "baselines":
        values = args.values.split(",") if args.values else space.uniform_values()
        runs = [(v, space.uniform(v), seed) for v in values for seed in range(args.seed_start, args.seeds)]
    else:
        runs = [
            (arch.summary(), arch, i + offset)
            for i, arch in enumerate(random_candidates(space, args.candidates, 0))
            for offset in (0, RETEST_SEED_OFFSET)
        ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not out.exists()
    rows = []
    with out.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        if new_file:
            writer.writeheader()
        for name, arch, seed in runs:
            started = time.perf_counter()
            result = evaluate(arch, training, seed=seed)
            row = {
                "mode": args.mode,
                "space": args.space,
                "name": name,
                "seed": seed,
                "accuracy": round(result.accuracy, 4),
                "mflops": round(result.cost.mflops, 3),
                "seconds": round(time.perf_counter() - started, 1),
                "recipe": recipe_text,
            }
            writer.writerow(row)
            handle.flush()
            rows.append(row)
            print(
                f"{name[:40]:40s} seed {seed:5d}: {row['accuracy']:.4f} @ {row['mflops']:.2f} MFLOPs ({row['seconds']}s)",
                flush=True,
            )
    if args.mode == "retest":
        first, second = [r["accuracy"] for r in rows[0::2]], [r["accuracy"] for r in rows[1::2]]
        tau = stats.kendalltau(first, second).statistic
        print(
            f"retest Kendall tau over {len(first)} candidates: {tau:.3f} "
            f"(accuracy range {min(first):.3f}-{max(first):.3f})"
        )
    else:
        for value in dict.fromkeys(r["name"] for r in rows):
            accs = [r["accuracy"] for r in rows if r["name"] == value]
            print(f"{value:>8s}: mean {sum(accs) / len(accs):.4f} over {len(accs)} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
