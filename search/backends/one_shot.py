"""``--strategy one-shot``: train one weight-sharing supernet, then score thousands of
candidates in seconds each, then retrain the top of the one-shot front from scratch.

1. The supernet of the space (:mod:`search.strategies.supernet`) is trained once with the sandwich
   rule and in-place distillation, saved under ``<results-dir>/<study>/supernet/`` and reused
   by later searches of the same space and settings.
2. A separate study, ``<study>-oneshot``, holds the one-shot scores (user attribute
   ``fidelity = "one-shot"``), searched with NSGA-II by default. One-shot scores are never
   mixed with stand-alone accuracies on one front.
3. ``--baselines`` queues the space's uniform configurations (and published models) first
   in the one-shot study, scored like every candidate.
4. ``--retrain-top K`` queues K configurations spread along the one-shot front into the
   ordinary study ``<study>`` (user attribute ``from_one_shot``), where they are trained
   from scratch by the ordinary evaluation path; the one-shot study's report shows both fronts.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from search.backends.progress import Progress
from search.backends.sampler import study_sampler
from search.backends.study import count_finished, enqueue_baselines, open_search, write_run_json
from search.backends.trial import Streaks, tell_outcome
from search.compat import study_storage
from search.errors import SearchAborted
from search.evaluation.candidate import score_candidate
from search.reporting.front import front_summary, pareto_records
from search.settings import Settings, resolve_device
from search.storage import StudyMismatch, is_repeat, load_records, study_objectives
from search.strategies.early_stopping import guessing

__all__ = ["one_shot_study_name", "run_one_shot_search"]


def one_shot_study_name(settings: Settings) -> str:
    return f"{settings.study}-oneshot"


# What a supernet learns from the same settings changed with this number (see supernet_path).
SUPERNET_VERSION = 3


def supernet_path(settings: Settings, fingerprint: dict) -> Path:
    key = json.loads(
        json.dumps(
            {
                "space": fingerprint,
                "training": settings.training.to_json(),
                "seed": settings.seed,
                "epochs": settings.one_shot.supernet_epochs,
                # 2: FLGC choices train with FLGConv2d's exact 0/1 mask (1: a straight-through
                # product, off by float rounding); 3: the sandwich's mean loss, not its sum.
                # A supernet of an older version is never reused.
                "version": SUPERNET_VERSION,
            },
            sort_keys=True,
            default=str,
        )
    )
    # Neither where nor how fast it runs changes what is learned; --epochs is replaced by
    # the supernet's own epochs.
    for volatile in ("device", "threads", "amp", "data_dir", "epochs"):
        key["training"].pop(volatile, None)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return settings.study_dir / "supernet" / f"supernet-{digest}.pt"


def _trained_supernet(settings: Settings, space, data, device: torch.device, progress: Progress):
    from search.strategies.supernet import Supernet, load_supernet, save_supernet, train_supernet

    path = supernet_path(settings, space.fingerprint())
    if path.exists():
        supernet, meta = load_supernet(space, path)
        progress.message(f"reusing the trained supernet {path}")
        _check_learned(meta.get("history") or [], data.num_classes, path)
        return supernet, path
    epochs = settings.one_shot.supernet_epochs
    progress.message(
        f"training the supernet of {space.name} for {epochs} epochs (sandwich rule, in-place distillation)"
    )
    torch.manual_seed(settings.seed)  # the initial weights belong to the cache key's seed
    supernet = Supernet(space)
    started = time.perf_counter()

    def on_epoch(record: dict) -> None:
        progress.message(
            f"supernet epoch {record['epoch']}/{epochs}: largest {record['val_accuracy_largest']:.4f}, "
            f"smallest {record['val_accuracy_smallest']:.4f}, {record['seconds']:.1f}s"
        )

    training = settings.training.replace(epochs=epochs)
    history = train_supernet(supernet, data, training, settings.seed, device, on_epoch=on_epoch)
    supernet.to("cpu")
    meta = {
        "space": space.fingerprint(),
        "training": training.to_json(),
        "history": history,
        "seconds": time.perf_counter() - started,
    }
    save_supernet(supernet, path, meta)
    _check_learned(history, data.num_classes, path)
    return supernet, path


def _check_learned(history: list[dict], num_classes: int, path: Path) -> None:
    """Refuse a supernet whose largest candidate still guesses after training: every score
    it gives would be a guess too, and the one-shot front a random one."""
    accuracy = history[-1].get("val_accuracy_largest") if history else None
    chance = 1 / num_classes
    if accuracy is not None and guessing(accuracy, chance):
        raise SearchAborted(
            f"the supernet did not learn: after {len(history)} epochs its largest candidate scores {accuracy:.3f} "
            f"(chance {chance:.3f}), so its scores would be guesses; train it longer (--supernet-epochs) "
            f"or at a lower --lr (it is kept in {path})"
        )


def _spread(records: list, k: int) -> list:
    """``k`` records evenly spread along a front sorted by cost (both ends included)."""
    ordered = sorted(records, key=lambda r: r.values["mflops"])
    if k >= len(ordered):
        return ordered
    if k == 1:
        return [max(ordered, key=lambda r: r.values["accuracy"])]
    step = (len(ordered) - 1) / (k - 1)
    return [ordered[round(i * step)] for i in range(k)]


def run_one_shot_search(settings: Settings) -> optuna.Study:
    """Supernet, one-shot study up to ``budget`` scored candidates, then ``--retrain-top``."""
    from search.strategies.supernet import score

    if "latency_ms" in settings.objectives:
        raise SearchAborted("--strategy one-shot supports the accuracy, mflops and params objectives")
    if settings.training.threads:
        torch.set_num_threads(settings.training.threads)
    device = resolve_device(settings.training.device)  # once: supernet training and scoring
    standalone = open_search(settings, device=device)  # the ordinary study: checks and creates it
    one_shot_settings = settings.replace(study_name=one_shot_study_name(settings))
    context = open_search(one_shot_settings, heartbeat=False, device=device)
    study = context.study
    # Scores of two different supernets must not share a front.
    supernet_name = supernet_path(settings, context.space.fingerprint()).name
    if study.user_attrs.get("supernet", supernet_name) != supernet_name:
        raise StudyMismatch(
            f"study '{study.study_name}' holds scores of supernet {study.user_attrs['supernet']}, and this run's "
            f"supernet settings (--supernet-epochs, --seed, training) give {supernet_name}; "
            "use the same options, or --study-name NEW"
        )
    study.set_user_attr("supernet", supernet_name)
    study.set_user_attr("fidelity", "one-shot")
    study.set_user_attr("retrained_study", standalone.study.study_name)
    from search.evaluation.evaluate import get_dataset

    data = get_dataset(settings.training)
    supernet, path = _trained_supernet(
        settings, context.space, data, device, Progress(settings.budget, 0, quiet=settings.quiet)
    )
    progress = Progress(settings.budget, count_finished(study), quiet=settings.quiet)  # times scoring only
    write_run_json(context, {"strategy": "one-shot", "supernet": str(path)})
    supernet.to(device)
    sampler = study_sampler(settings, study, shared=False)
    study = optuna.load_study(study_name=study.study_name, storage=study_storage(study), sampler=sampler)
    queued, note = enqueue_baselines(context)  # scored first, like any candidate; drawn as baselines
    if queued:
        progress.message(f"queued {queued} uniform baselines of {context.space.name} for scoring")
    if note:
        progress.message(note)
    progress.message(
        f"one-shot study '{study.study_name}': {count_finished(study)}/{settings.budget} scored candidates"
    )
    attrs = {"fidelity": "one-shot", "supernet": path.name}
    # An infeasible candidate costs no scoring: only failures in a row stop this search.
    streaks = Streaks(settings.max_failures, settings.max_mflops, max_infeasible=None)
    while (done := count_finished(study)) < settings.budget:
        trial = study.ask()
        arch = context.space.sample(trial)
        # Through the shared path: a candidate over --max-mflops is infeasible and not scored,
        # and a scoring error fails this trial only (the search goes on, as train-each does).
        outcome = score_candidate(
            arch,
            context.plan,
            trial.number,
            lambda candidate: score(supernet, candidate, data, device=device, seed=settings.seed),
            attrs,
        )
        tell_outcome(study, trial, outcome, settings.objectives, with_constraint=settings.max_mflops is not None)
        if outcome.state == "failed":
            progress.message(outcome.line)
        streaks.count(outcome)
        if outcome.state == "complete" and (done + 1) % max(1, settings.budget // 20) == 0:
            progress.trial(done + 1, front_summary(study), outcome.line)
    if settings.one_shot.retrain_top:
        _retrain_top(settings, study, standalone, progress)
    return study


def _retrain_top(settings: Settings, study: optuna.Study, standalone, progress: Progress) -> None:
    """Queue the top of the one-shot front into the ordinary study and train them from scratch."""
    from search.backends.optuna_driver import run_optuna_search

    front = pareto_records(load_records(study), study_objectives(study))
    chosen = _spread(front, settings.one_shot.retrain_top)
    target = standalone.study
    # Configurations already retrained (or queued) are not trained again, however often the
    # one-shot sampler proposes them.
    already = {
        json.dumps(t.user_attrs.get("architecture") or standalone.space.from_params(t.params).to_json(), sort_keys=True)
        for t in target.get_trials(deepcopy=False)
        if t.user_attrs.get("from_one_shot") is not None
    }
    queued = 0
    for record in chosen:
        if json.dumps(record.architecture.to_json(), sort_keys=True) in already:
            continue
        params = standalone.space.to_params(record.architecture)
        target.enqueue_trial(params, user_attrs={"from_one_shot": record.number, "one_shot_score": record.accuracy})
        queued += 1
    progress.message(
        f"retraining {queued} configuration(s) of the one-shot front from scratch in study '{target.study_name}'"
        + (f" ({len(chosen) - queued} already retrained)" if queued < len(chosen) else "")
        + (f"; the front has only {len(front)}" if len(front) < settings.one_shot.retrain_top else "")
    )
    # Queued repeats (a --confirm run killed earlier) spend no budget: they must not make room for a new candidate.
    waiting = sum(1 for t in target.get_trials(deepcopy=False, states=(TrialState.WAITING,)) if not is_repeat(t))
    budget = count_finished(target) + waiting
    if budget > count_finished(target):
        # Retrained to the end: these were chosen already, a rung among a handful says nothing.
        run_optuna_search(settings.replace(budget=budget, baselines=False, early_stop="none"))
