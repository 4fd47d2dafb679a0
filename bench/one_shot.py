#!/usr/bin/env python
"""One-shot honesty check: do supernet scores rank candidates like stand-alone training, and
does ``--strategy one-shot`` find a better front than training each candidate for the same
number of training epochs?

For each seed (``--seed-start`` .. ``--seed-start + --seeds - 1``), in-process, real training on
``--dataset`` (``digits`` by default):

1. **Supernet.** ``search.strategies.supernet.train_supernet`` for ``--supernet-epochs`` epochs (the
   initialisation seeded too), saved where ``search.backends.one_shot`` looks for it, so that step 3
   reuses this very supernet instead of training another one.
2. **Ranking.** ``--candidates`` uniformly random architectures of the space (own seeded
   generator, duplicates redrawn): one-shot score (``search.strategies.supernet.score``: inherited
   weights, BN recalibrated, validation accuracy) and stand-alone validation accuracy
   (``search.evaluation.evaluate.evaluate`` with ``--epochs``, the same validation split). Kendall tau
   and Spearman rho between them (``scipy.stats``). Both are rank correlations: 1 = the
   supernet orders the candidates exactly like training does, 0 = no better than chance.
3. **Budget comparison at equal training epochs.**
   - one-shot: ``search.backends.one_shot.run_one_shot_search`` with ``--search-candidates`` scored
     candidates (NSGA-II) and ``--retrain-top K``; its cost in training epochs is
     ``supernet_epochs * (2 + num_random)`` (one sandwich step trains the largest, the
     smallest and ``num_random`` = 2 random sub-networks: each supernet epoch counts as that
     many sub-network epochs) plus the epochs of the K retrains. Scoring is not counted in
     epochs (it trains nothing); its seconds are reported.
   - train-each: ``search.backends.optuna_driver.run_optuna_search`` (``--sampler``, default TPE) with
     ``budget = one-shot epochs // --epochs`` trials, in its own temporary storage.
   - compared: the hypervolume (study reference point: accuracy 0, the dense model's MFLOPs;
     ``search.reporting.front.front_hypervolume``) of the **retrained** one-shot configurations (the
     ordinary study the one-shot search fills; stand-alone accuracies, same fidelity as
     train-each) against the train-each front. The hypervolume of the one-shot *scores*
     (``hv_one_shot_scores``) is reported for reference only: another fidelity, not comparable.

The epoch accounting favours neither arm on purpose but is not exact: the four sub-networks
of a sandwich step are of very different sizes (the largest costs most), and stand-alone
epochs are not all of the dense model either. Seconds of every stage are reported as well.

Outputs (``--out`` = ``X.csv``): ``X.csv`` one row per (seed, candidate) with ``seed,
candidate, arch, mflops, one_shot_score, standalone_accuracy`` (+ ``score_seconds,
train_seconds``); ``X.json`` the summary (per seed: kendall_tau, spearman, hv_one_shot_retrained,
hv_train_each, epochs of each arm, seconds, ...; and medians over seeds); ``X.html`` a plotly
scatter of one-shot score against stand-alone accuracy. Medians over seeds are printed.

    python bench/one_shot.py --out results/bench/one_shot.csv --seeds 3 --candidates 20 --epochs 5 \\
        --supernet-epochs 20 --width 0.25 --space vgg_hetconv --threads 2
    python bench/one_shot.py --seeds 1 --candidates 4 --epochs 1 --supernet-epochs 1 \\
        --search-candidates 20 --threads 1    # smoke test (1-2 minutes)

Expected runtime of the full command above on this machine (2 shared cores, no GPU),
extrapolated from the stage timings of smoke runs at ``--threads 1``: per seed about 2 min
of supernet training (20 epochs at ~6 s), 2.5-3 min for the 20 stand-alone candidates (5
epochs at ~1.5 s, plus evaluation), 4 min for the one-shot search (300 candidates at ~0.5 s
of scoring plus ~0.3 s of sampler and storage each, and 4 retrains of 5 epochs) and 3 min
for the train-each search (100 epochs: 20 trials of 5 epochs): **about 12 min per seed,
35-40 min for 3 seeds** with a core to spare per thread. With ``--threads 2`` on cores that
other jobs share, OpenMP contention made every stage 3-10 times slower in the smoke runs (a
supernet epoch 28-67 s instead of 6 s, a score 2.9 s instead of 0.5 s; the tiny
``--seeds 1 --candidates 4 --epochs 1 --supernet-epochs 1`` config with its 300 scored
candidates took 24 min instead of ~3): expect **2-4 hours** for the full command at
``--threads 2`` on a busy machine, so use ``--threads 1`` there.
"""

from __future__ import annotations

import argparse
import inspect
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._one_shot_report import (
    correlations,
    print_summary,
    study_hypervolume,
    trained_epochs,
    write_csv,
    write_plot,
    write_summary,
)
from bench._one_shot_settings import one_shot_settings, train_each_settings

# The random candidates must not be the sub-networks the supernet trained on first (its
# sandwich sampler uses torch.Generator().manual_seed(seed)): another stream.
CANDIDATE_SEED_OFFSET = 1_000_003
RETEST_SEED_OFFSET = 7_919  # another training seed for the retest of the same candidate


def num_random_default() -> int:
    from search.strategies.supernet import train_supernet

    return int(inspect.signature(train_supernet).parameters["num_random"].default)


# ----------------------------------------------------------------------------- stages


def train_and_save_supernet(args: argparse.Namespace, settings, space, data, seed: int) -> tuple[Any, dict]:
    """Train the supernet of one seed and save it where ``run_one_shot_search`` reuses it."""
    import torch

    from search.backends.one_shot import supernet_path
    from search.settings import resolve_device
    from search.strategies.supernet import Supernet, save_supernet, train_supernet

    torch.manual_seed(seed)  # the initial weights too (Supernet() draws from the global RNG)
    supernet = Supernet(space)
    training = settings.training.replace(epochs=args.supernet_epochs)
    started = time.perf_counter()
    history = train_supernet(supernet, data, training, seed, resolve_device(args.device))
    seconds = time.perf_counter() - started
    supernet.to("cpu")
    path = supernet_path(settings, space.fingerprint())
    save_supernet(
        supernet,
        path,
        {
            "space": space.fingerprint(),
            "training": training.to_json(),
            "history": history,
            "seconds": seconds,
            "written_by": "bench/one_shot.py",
        },
    )
    last = history[-1] if history else {}
    return supernet, {
        "supernet_seconds": seconds,
        "supernet_path": str(path),
        "supernet_val_largest": last.get("val_accuracy_largest"),
        "supernet_val_smallest": last.get("val_accuracy_smallest"),
    }


def random_candidates(supernet, count: int, seed: int) -> list:
    import torch

    generator = torch.Generator().manual_seed(CANDIDATE_SEED_OFFSET + seed)
    chosen: list = []
    for _ in range(100 * count):
        if len(chosen) == count:
            break
        arch = supernet.sample(generator)
        if arch not in chosen:
            chosen.append(arch)
    return chosen


def rank_candidates(args: argparse.Namespace, supernet, data, training, seed: int) -> list[dict[str, Any]]:
    """One-shot score and stand-alone accuracy of ``--candidates`` random architectures."""
    from search.evaluation.cost import architecture_cost
    from search.evaluation.evaluate import evaluate
    from search.settings import resolve_device
    from search.strategies.supernet import score

    rows = []
    candidates = random_candidates(supernet, args.candidates, seed)
    for i, arch in enumerate(candidates):
        started = time.perf_counter()
        one_shot = score(supernet, arch, data, device=resolve_device(args.device), seed=seed)
        rows.append(
            {
                "seed": seed,
                "candidate": i,
                "arch": arch.summary(),
                "mflops": architecture_cost(arch).mflops,
                "one_shot_score": one_shot,
                "score_seconds": time.perf_counter() - started,
                "_arch": arch,
            }
        )
    for row in rows:
        arch = row.pop("_arch")
        result = evaluate(arch, training, seed=seed * 100_003 + row["candidate"])
        row.update(standalone_accuracy=result.accuracy, train_seconds=result.train_seconds)
        retest = ""
        if args.retest:  # the same candidate trained again from another seed: the noise ceiling
            again = evaluate(arch, training, seed=seed * 100_003 + row["candidate"] + RETEST_SEED_OFFSET)
            row["standalone_retest"] = again.accuracy
            retest = f" (again: {again.accuracy:.4f})"
        print(
            f"  candidate {row['candidate']}: score {row['one_shot_score']:.4f}, stand-alone "
            f"{result.accuracy:.4f}{retest} @ {row['mflops']:.2f} MFLOPs ({result.train_seconds:.1f}s)",
            flush=True,
        )
    return rows


def compare_budgets(
    args: argparse.Namespace, seed: int, settings, supernet: dict[str, Any], work_dir: Path
) -> dict[str, Any]:
    """The one-shot search (reusing the seed's supernet) against train-each at equal epochs."""
    import optuna

    from search.backends.one_shot import run_one_shot_search
    from search.backends.optuna_driver import run_optuna_search
    from search.storage import open_storage

    started = time.perf_counter()
    one_shot_study = run_one_shot_search(settings)
    search_seconds = time.perf_counter() - started
    retrained_study = optuna.load_study(study_name=settings.study, storage=open_storage(settings.storage_url))
    hv_retrained, reference = study_hypervolume(retrained_study)
    hv_scores, _ = study_hypervolume(one_shot_study)
    retrain_epochs = trained_epochs(retrained_study)
    retrained = len(retrained_study.get_trials(deepcopy=False))
    retrain_seconds = sum(
        float(t.user_attrs.get("train_seconds") or 0) for t in retrained_study.get_trials(deepcopy=False)
    )
    score_seconds = sum(
        float(t.user_attrs.get("score_seconds") or 0) for t in one_shot_study.get_trials(deepcopy=False)
    )
    reused = all(
        t.user_attrs.get("supernet") == Path(supernet["supernet_path"]).name
        for t in one_shot_study.get_trials(deepcopy=False)
        if t.state.name == "COMPLETE"
    )
    epochs_one_shot = args.supernet_epochs * (2 + num_random_default()) + retrain_epochs

    budget = max(1, epochs_one_shot // args.epochs)
    started = time.perf_counter()
    train_each = run_optuna_search(train_each_settings(args, seed, budget, work_dir / f"train-each-seed{seed}"))
    train_each_seconds = time.perf_counter() - started
    hv_train_each, reference_train_each = study_hypervolume(train_each)
    if reference_train_each != reference:
        raise RuntimeError(f"the two studies have different reference points: {reference} vs {reference_train_each}")
    return {
        "hv_one_shot_retrained": hv_retrained,
        "hv_train_each": hv_train_each,
        "hv_one_shot_scores": hv_scores,
        "hv_ratio": hv_retrained / hv_train_each if hv_train_each > 0 else math.nan,
        "epochs_one_shot": epochs_one_shot,
        "epochs_supernet_counted": epochs_one_shot - retrain_epochs,
        "epochs_retrained": retrain_epochs,
        "retrained": retrained,
        "epochs_train_each": trained_epochs(train_each),
        "budget_train_each": budget,
        "scored_candidates": settings.budget,
        "supernet_reused": reused,
        "seconds_one_shot": supernet["supernet_seconds"] + search_seconds,
        "seconds_scoring": score_seconds,
        "seconds_retraining": retrain_seconds,
        "seconds_one_shot_search": search_seconds,
        "seconds_train_each": train_each_seconds,
        "reference_point": reference,
    }


def run_seed(args: argparse.Namespace, seed: int, work_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import torch

    from search.evaluation.evaluate import get_dataset
    from spaces import get_space

    torch.set_num_threads(args.threads)  # the one-shot code path does not apply --threads itself
    settings = one_shot_settings(args, seed, work_dir / f"one-shot-seed{seed}")
    data = get_dataset(settings.training)
    space = get_space(args.space, width=args.width, num_classes=data.num_classes)
    began = time.perf_counter()
    supernet, info = train_and_save_supernet(args, settings, space, data, seed)
    print(
        f"seed {seed}: supernet trained in {info['supernet_seconds']:.0f}s "
        f"(val. largest {info['supernet_val_largest']}, smallest {info['supernet_val_smallest']})",
        flush=True,
    )
    started = time.perf_counter()
    rows = rank_candidates(args, supernet, data, settings.training, seed)
    ranking_seconds = time.perf_counter() - started
    del supernet
    summary = {"seed": seed, **correlations(rows), "candidates": len(rows), "seconds_ranking": ranking_seconds, **info}
    retest = (
        f"; stand-alone vs its retest {summary['kendall_retest']:.3f}, one-shot vs the mean of both "
        f"{summary['kendall_tau_mean']:.3f}"
        if "kendall_retest" in summary
        else ""
    )
    print(
        f"seed {seed}: Kendall tau {summary['kendall_tau']:.3f}, Spearman {summary['spearman']:.3f} "
        f"over {len(rows)} candidates{retest} ({ranking_seconds:.0f}s)",
        flush=True,
    )
    summary.update(compare_budgets(args, seed, settings, info, work_dir))
    summary["seconds_seed"] = time.perf_counter() - began
    print(
        f"seed {seed}: HV one-shot retrained {summary['hv_one_shot_retrained']:.4g} ({summary['retrained']} retrained, "
        f"{summary['epochs_one_shot']} epochs, {summary['seconds_one_shot']:.0f}s) vs train-each "
        f"{summary['hv_train_each']:.4g} ({summary['budget_train_each']} trials, {summary['epochs_train_each']} epochs, "
        f"{summary['seconds_train_each']:.0f}s); seed total {summary['seconds_seed']:.0f}s",
        flush=True,
    )
    return rows, summary


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out", default="results/bench/one_shot.csv", help="CSV (the JSON summary and HTML plot go beside it)"
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default: 3)")
    p.add_argument("--seed-start", type=int, default=0, help="seeds start..start+N-1 (to extend a run; default: 0)")
    p.add_argument(
        "--candidates", type=int, default=20, help="random candidates scored and trained per seed (default: 20)"
    )
    p.add_argument(
        "--retest",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train every ranked candidate a second time from another seed, to measure how far "
        "stand-alone training agrees with itself (default: on)",
    )
    p.add_argument("--epochs", type=int, default=5, help="stand-alone training epochs (default: 5)")
    p.add_argument("--supernet-epochs", type=int, default=20, help="supernet training epochs (default: 20)")
    p.add_argument(
        "--search-candidates", type=int, default=300, help="candidates the one-shot search scores (default: 300)"
    )
    p.add_argument("--retrain-top", type=int, default=4, help="one-shot front configurations retrained (default: 4)")
    p.add_argument(
        "--sampler", default="tpe", help="sampler of the train-each search (default: tpe, the tool's default)"
    )
    p.add_argument("--width", type=float, default=0.25, help="width multiplier (default: 0.25)")
    p.add_argument("--space", default="vgg_hetconv", help="search space (default: vgg_hetconv)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    p.add_argument("--dataset", default="digits", help="digits, digits32, cifar10 or cifar100 (default: digits)")
    p.add_argument("--data-dir", default="data", help="where CIFAR is and digits32 is cached (default: data)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default: cpu)")
    p.add_argument("--work-dir", default=None, help="keep the studies here (default: a temporary folder, removed)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from search.quiet import quiet_libraries
    from search.settings import SettingsError

    quiet_libraries()  # the benchmark prints its own summary lines

    try:  # refuse bad options before any training
        if (
            min(args.seeds, args.candidates, args.epochs, args.supernet_epochs, args.threads) < 1
            or args.retrain_top < 1
            or args.seed_start < 0
        ):
            raise SettingsError(
                "--seeds, --candidates, --epochs, --supernet-epochs, --threads, --retrain-top must be >= 1, "
                "--seed-start >= 0"
            )
        one_shot_settings(args, 0, Path("unused"))
        train_each_settings(args, 0, 1, Path("unused"))
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work_dir = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench_one_shot_"))
    rows: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    began = time.perf_counter()
    try:
        for seed in range(args.seed_start, args.seed_start + args.seeds):
            seed_rows, summary = run_seed(args, seed, work_dir)
            rows += seed_rows
            summaries.append(summary)
            write_csv(out, rows)  # after every seed: a long benchmark leaves its partial results
            write_summary(out.with_suffix(".json"), args, summaries, num_random_default())
    finally:
        if not args.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    print_summary(summaries)
    html = write_plot(out, rows, summaries)
    print(f"\n{out} ({len(rows)} rows), {out.with_suffix('.json')}, {html}")
    print(f"total {time.perf_counter() - began:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
