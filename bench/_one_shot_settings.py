"""Settings of the two searches ``bench/one_shot.py`` compares: the quick preset's training
recipe with the benchmark's options, for the one-shot search and for train-each."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["one_shot_settings", "train_each_settings", "training_for"]


def training_for(args: argparse.Namespace):
    """The quick preset's training recipe on ``--dataset``, with ``--epochs`` and ``--threads``."""
    from bench._recipe import quick_training

    return quick_training(args.dataset, args.data_dir, args.epochs, args.threads, args.device)


def one_shot_settings(args: argparse.Namespace, seed: int, results_dir: Path):
    from search.settings import Settings

    return Settings(
        space=args.space,
        budget=args.search_candidates,
        width=args.width,
        training=training_for(args),
        sampler="nsga2",
        seed=seed,
        results_dir=str(results_dir),
        strategy="one-shot",
        retrain_top=args.retrain_top,
        supernet_epochs=args.supernet_epochs,
        quiet=True,
        baselines=False,  # measured before baselines were queued by default: candidates only
        confirm=0,  # the one-shot front against single-run train-each, as first measured
    )


def train_each_settings(args: argparse.Namespace, seed: int, budget: int, results_dir: Path):
    from search.settings import Settings

    return Settings(
        space=args.space,
        budget=budget,
        width=args.width,
        training=training_for(args),
        sampler=args.sampler,
        seed=seed,
        results_dir=str(results_dir),
        quiet=True,
        early_stop="none",  # budget = epochs // --epochs trials holds only if every trial trains to the end
        baselines=False,
        confirm=0,
    )
