"""The Optuna backend: one process asks the study for candidates and evaluates them.

Multi-objective (validation accuracy up, MFLOPs down by default). FLOPs are counted before
training, so a candidate over ``--max-mflops`` is recorded as infeasible through Optuna's
trial constraints (the sampler learns to avoid the region) without training it and without
spending budget. After the budget, ``--confirm R`` trains the front's configurations again
(:mod:`search.backends.confirm`) until each has R + 1 runs.
"""

from __future__ import annotations

import time

import optuna

from search.backends.budget import Heartbeat, budget_lock, take_slot
from search.backends.confirm import take_repeat
from search.backends.progress import Progress
from search.backends.sampler import study_sampler
from search.backends.study import (
    SearchContext,
    count_finished,
    enqueue_baselines,
    fail_and_requeue,
    open_search,
    retry_origin,
    sample_hyperparameters,
    trial_seed,
    write_run_json,
)
from search.backends.trial import Streaks, checkpoint_path, rung_peers, tell_outcome
from search.compat import study_storage
from search.evaluation.candidate import CostedEpochCallback, Outcome, evaluate_candidate
from search.evaluation.evaluate import frozen_between_trials
from search.evaluation.train import EpochRecord
from search.reporting.front import front_summary
from search.settings import Settings, mask_url
from search.strategies.early_stopping import early_stop_line, rung_attr, stopping_rule

__all__ = ["run_optuna_search"]

# A worker with no slot (the rest of the budget runs elsewhere) checks again after this.
WAIT_FOR_OTHERS_SECONDS = 2.0


def _rung_callback(context: SearchContext, trial: optuna.Trial) -> CostedEpochCallback:
    """Early stopping through the storage: at a rung, record this trial's objectives there
    (user attribute ``rung_<epoch>``) and compare with every trial recorded at that rung so
    far, in any worker or machine (asynchronous, nobody waits)."""
    rule = stopping_rule(context.settings.early_stopping)

    def on_epoch(record: EpochRecord, costs: dict[str, float]) -> bool:
        if not rule.is_rung(record.epoch):
            return False
        values = [record.val_accuracy if o == "accuracy" else costs[o] for o in context.settings.objectives]
        trial.set_user_attr(rung_attr(record.epoch), values)
        keep = rule.decide(record.epoch, trial.number, values, rung_peers(context.study, record.epoch, trial.number))
        if not keep:
            trial.set_user_attr("stopped_at_rung", record.epoch)
        return not keep

    return on_epoch


def _run_trial(context: SearchContext, trial: optuna.Trial, repeat: bool = False) -> Outcome:
    """Sample, evaluate through the shared path, record and tell one trial. A confirmation
    run (``repeat``) is never early-stopped: only a full training is a run of its configuration."""
    settings, study = context.settings, context.study
    origin = retry_origin(study, trial.number)
    arch = context.space.sample(trial)
    hyperparameters = sample_hyperparameters(trial, settings)
    # A retry keeps its original's seed and checkpoint, so it resumes the same training.
    on_epoch = _rung_callback(context, trial) if settings.stops_early and not repeat else None
    with Heartbeat(study, trial):
        outcome = evaluate_candidate(
            arch,
            hyperparameters,
            context.plan,
            trial_seed(settings, origin),
            trial.number,
            on_epoch=on_epoch,
            checkpoint=checkpoint_path(settings, origin),
        )
    if origin != trial.number:
        trial.set_user_attr("retry_of", origin)
    tell_outcome(study, trial, outcome, settings.objectives, with_constraint=settings.max_mflops is not None)
    return outcome


def run_optuna_search(settings: Settings) -> optuna.Study:
    """Run (or continue) the study of ``settings`` until it has ``budget`` finished trials.

    Any number of processes may run this on one study (``--workers``, or the same command
    on several machines with a PostgreSQL storage): slots are taken under a lock, so the
    study ends with exactly ``budget`` finished trials."""
    context = open_search(settings)
    study = context.study
    done = count_finished(study)
    sampler = study_sampler(settings, study, shared=True)
    # On the open study's storage object: its trials (Optuna's cache and this process's index,
    # search.storage.trial_index) are read once, not once for each study object.
    study = optuna.load_study(study_name=study.study_name, storage=study_storage(study), sampler=sampler)
    context.study = study
    # The sampler's first ask reads every trial into Optuna's per-process cache, later asks only
    # the new ones. Read them here, outside the budget lock: asked first under it, that read of
    # a large study held the lock for seconds per worker (4 workers at 10000 trials: one of them
    # waited 50 s for its second trial).
    study.get_trials(deepcopy=False)
    if settings.worker_index is None:  # --workers: the parent wrote it
        write_run_json(context)
    prefix = f"[worker {settings.worker_index}] " if settings.worker_index is not None else ""
    progress = Progress(settings.budget, done, quiet=settings.quiet, prefix=prefix)
    with budget_lock(settings.storage_url, study.study_name):
        queued, note = enqueue_baselines(context)
    if queued:
        progress.message(f"queued {queued} uniform baselines of {context.space.name}")
    elif note and settings.worker_index in (None, 0):
        progress.message(note)
    progress.message(
        f"study '{study.study_name}' in {mask_url(settings.storage_url)}: {done}/{settings.budget} finished trials; "
        f"space {context.space.name} ({len(context.space.slots)} layers, {context.space.size:.3g} candidates); "
        f"{early_stop_line(settings.early_stopping)}"
    )
    streaks = Streaks(settings.max_failures, settings.max_mflops)
    with frozen_between_trials():  # the collection after each trial skips the study's trials
        while (done := count_finished(study)) < settings.budget:
            trial = take_slot(study, settings.storage_url, settings.budget)
            if trial is None:  # the rest of the budget is running in other workers
                time.sleep(WAIT_FOR_OTHERS_SECONDS)
                continue
            outcome = _run_or_drop(context, trial, progress)
            if outcome is None:
                continue
            spent = outcome.state in ("complete", "early_stopped")  # failed and infeasible trials spend no budget
            if not spent:
                progress.message(outcome.line)
            streaks.count(outcome)  # raises past too many failed (or infeasible) trials in a row
            if spent:
                progress.trial(count_finished(study), front_summary(study), outcome.line)
        if settings.confirm:
            _confirm_front(context, progress, streaks)
    return study


def _run_or_drop(
    context: SearchContext, trial: optuna.Trial, progress: Progress, repeat: bool = False
) -> Outcome | None:
    """Run one trial; None when another worker failed it meanwhile (its result is dropped)."""
    study = context.study
    try:
        return _run_trial(context, trial, repeat)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Another worker found this trial's heartbeat stale (an overloaded machine or
        # storage), failed it and queued its retry: drop this result, the retry counts.
        progress.message(
            f"trial {trial.number}: failed by another worker while it ran (its heartbeat went stale: "
            "an overloaded machine or storage); its queued retry runs it again"
        )
        return None
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): fail it now and queue it again once
        layers = {slot.name for slot in context.space.slots}
        fail_and_requeue(study, study.get_trials(deepcopy=False)[trial.number], "interrupted", layers)
        raise


def _confirm_front(context: SearchContext, progress: Progress, streaks: Streaks) -> None:
    """``--confirm R``: repeat the front's configurations (and those within its noise) until
    each has R + 1 runs, sharing the work with every other worker of the study."""
    settings, study = context.settings, context.study
    objectives = list(settings.objectives)
    progress.start_confirmation(settings.confirm, settings.training.epochs)
    announced = False
    while True:
        slot = take_repeat(study, settings.storage_url, objectives, settings.confirm, settings.race)
        if slot.done:
            break
        if slot.trial is None:  # the remaining runs are running in other workers
            time.sleep(WAIT_FOR_OTHERS_SECONDS)
            continue
        if not announced:
            progress.message(
                f"confirming the front: {slot.plan.front_size} configurations on it, "
                f"~{slot.plan.remaining} runs to give each of them (and those within its noise) "
                f"{settings.confirm + 1} runs"
                + (
                    f" (then up to {settings.race} more for members not resolved from a cheaper one)"
                    if settings.race
                    else ""
                )
            )
            announced = True
        outcome = _run_or_drop(context, slot.trial, progress, repeat=True)
        if outcome is None:
            continue
        streaks.count(outcome)
        line = outcome.line.replace(
            f"trial {slot.trial.number}:", f"trial {slot.trial.number} (repeat of #{slot.repeat_of}):", 1
        )
        if outcome.state == "complete":
            progress.repeat(front_summary(study), max(slot.plan.remaining - 1, 0), line)
        else:
            progress.message(line)
