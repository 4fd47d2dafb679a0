"""The Optuna backend: one process asks the study for candidates and evaluates them.

Multi-objective (validation accuracy up, MFLOPs down by default). FLOPs are counted before
training, so a candidate over ``--max-mflops`` is recorded as infeasible through Optuna's
trial constraints (the sampler learns to avoid the region) without training it and without
spending budget.
"""

from __future__ import annotations

import os
import socket
import time
import zlib

import optuna
from optuna.trial import TrialState

from search.backends.budget import Heartbeat, budget_lock, take_slot
from search.backends.progress import Progress
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
from search.errors import SearchAborted
from search.evaluation.candidate import CostedEpochCallback, Outcome, evaluate_candidate, record_outcome
from search.evaluation.train import EpochRecord
from search.reporting.front import front_summary
from search.settings import Settings, mask_url
from search.strategies.early_stopping import early_stop_line, peers_from_attrs, rung_attr, stopping_rule

__all__ = ["make_sampler", "run_optuna_search"]

# A worker with no slot (the rest of the budget runs elsewhere) checks again after this.
WAIT_FOR_OTHERS_SECONDS = 2.0
# Give up when this many candidates in a row are over the FLOPs ceiling.
MAX_INFEASIBLE_IN_A_ROW = 500


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")


def _sampler_seed(settings: Settings, study: optuna.Study) -> int:
    """The sampler's seed: offset by the trials already there (a continued study must not
    replay the first run's random start-up candidates) and by the worker. On a shared
    server storage (several machines start the same command at once) the host and process
    are mixed in too, or every machine would propose the same candidates."""
    seed = settings.seed + len(study.get_trials(deepcopy=False)) + 1000 * (settings.worker_index or 0)
    if not settings.storage_url.startswith("sqlite"):
        seed += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 1_000_000
    return seed


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
        # Failed trials are no peers: a retry must not compete with its own failed original.
        others = [
            (t.number, t.user_attrs)
            for t in context.study.get_trials(deepcopy=False)
            if t.number != trial.number and t.state != TrialState.FAIL
        ]
        keep = rule.decide(record.epoch, trial.number, values, peers_from_attrs(others, record.epoch))
        if not keep:
            trial.set_user_attr("stopped_at_rung", record.epoch)
        return not keep

    return on_epoch


def _run_trial(context: SearchContext, trial: optuna.Trial) -> Outcome:
    """Sample, evaluate through the shared path, record and tell one trial."""
    settings, study = context.settings, context.study
    origin = retry_origin(study, trial.number)
    arch = context.space.sample(trial)
    hyperparameters = sample_hyperparameters(trial, settings)
    # A retry keeps its original's seed and checkpoint, so it resumes the same training.
    checkpoint = settings.study_dir / "checkpoints" / f"trial_{origin}.pt" if settings.checkpoint_every else None
    on_epoch = _rung_callback(context, trial) if settings.stops_early else None
    with Heartbeat(study, trial):
        outcome = evaluate_candidate(
            arch,
            hyperparameters,
            settings,
            trial_seed(settings, origin),
            trial.number,
            on_epoch=on_epoch,
            checkpoint=checkpoint,
            latency=context.latency,
        )
    record_outcome(trial, outcome, with_constraint=settings.max_mflops is not None)
    if origin != trial.number:
        trial.set_user_attr("retry_of", origin)
    if outcome.state in ("complete", "infeasible"):
        study.tell(trial, outcome.objective_values(settings.objectives))
    else:
        study.tell(trial, state=TrialState.PRUNED if outcome.state == "early_stopped" else TrialState.FAIL)
    return outcome


def run_optuna_search(settings: Settings) -> optuna.Study:
    """Run (or continue) the study of ``settings`` until it has ``budget`` finished trials.

    Any number of processes may run this on one study (``--workers``, or the same command
    on several machines with a PostgreSQL storage): slots are taken under a lock, so the
    study ends with exactly ``budget`` finished trials."""
    context = open_search(settings)
    study = context.study
    done = count_finished(study)
    # Offset the sampler's seed by the trials already there, so a continued study does not
    # replay the random start-up candidates of the first run.
    sampler = make_sampler(settings.sampler, _sampler_seed(settings, study))
    study = optuna.load_study(study_name=study.study_name, storage=context.storage, sampler=sampler)
    context.study = study
    if settings.worker_index is None:  # --workers: the parent wrote it
        write_run_json(context)
    prefix = f"[worker {settings.worker_index}] " if settings.worker_index is not None else ""
    progress = Progress(settings.budget, done, quiet=settings.quiet, prefix=prefix)
    if settings.baselines:
        with budget_lock(settings.storage_url, study.study_name):
            queued = enqueue_baselines(context)
        if queued:
            progress.message(f"queued {queued} uniform baselines of {context.space.name}")
    progress.message(
        f"study '{study.study_name}' in {mask_url(settings.storage_url)}: {done}/{settings.budget} finished trials; "
        f"space {context.space.name} ({len(context.space.slots)} layers, {context.space.size:.3g} candidates); "
        f"{early_stop_line(settings.early_stopping)}"
    )
    infeasible_in_a_row = failures_in_a_row = 0
    while (done := count_finished(study)) < settings.budget:
        trial = take_slot(study, settings.storage_url, settings.budget, count_finished)
        if trial is None:  # the rest of the budget is running in other workers
            time.sleep(WAIT_FOR_OTHERS_SECONDS)
            continue
        try:
            outcome = _run_trial(context, trial)
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): fail it now and queue it again once
            layers = {slot.name for slot in context.space.slots}
            fail_and_requeue(study, study.get_trials(deepcopy=False)[trial.number], "interrupted", layers)
            raise
        if outcome.state == "failed":
            failures_in_a_row += 1
            progress.message(outcome.line)
            if failures_in_a_row >= settings.max_failures:
                raise SearchAborted(
                    f"{failures_in_a_row} trials in a row failed (last: {outcome.attrs.get('fail_reason')}); "
                    "the study is kept, fix the cause and run the same command again"
                )
            continue
        failures_in_a_row = 0
        if outcome.state == "infeasible":
            progress.message(outcome.line)
            infeasible_in_a_row += 1
            if infeasible_in_a_row >= MAX_INFEASIBLE_IN_A_ROW:
                raise SearchAborted(
                    f"{MAX_INFEASIBLE_IN_A_ROW} candidates in a row were over --max-mflops {settings.max_mflops}; raise the ceiling"
                )
            continue
        infeasible_in_a_row = 0
        pareto_size, best = front_summary(study)
        progress.trial(count_finished(study), pareto_size, best, outcome.line)
    return study
