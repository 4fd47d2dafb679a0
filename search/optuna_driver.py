"""The Optuna backend: one process asks the study for candidates and evaluates them.

Multi-objective (validation accuracy up, MFLOPs down by default). FLOPs are counted before
training, so a candidate over ``--max-mflops`` is recorded as infeasible through Optuna's
trial constraints (the sampler learns to avoid the region) without training it and without
spending budget.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from .candidate import evaluate_candidate, record_outcome
from .errors import SearchAborted
from .front import pareto_records
from .progress import Progress
from .settings import Settings
from .storage import load_records, study_objectives
from .study import (
    SearchContext,
    enqueue_baselines,
    count_finished,
    open_search,
    sample_hyperparameters,
    trial_seed,
    write_run_json,
)
from .train import TrialFailed

__all__ = ["make_sampler", "run_optuna_search"]

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


def _front_summary(study: optuna.Study) -> tuple[int, float | None]:
    records = load_records(study)
    accuracies = [r.values["accuracy"] for r in records if r.feasible_complete]
    front = pareto_records(records, study_objectives(study))
    return len(front), max(accuracies, default=None)


class _Objective:
    """The Optuna objective: sample, evaluate through the shared path, record."""

    def __init__(self, context: SearchContext) -> None:
        self.context = context
        self.line = ""
        self.number = -1

    def __call__(self, trial: optuna.Trial) -> list[float]:
        settings = self.context.settings
        self.number, self.line = trial.number, f"trial {trial.number}: interrupted"
        arch = self.context.space.sample(trial)
        hyperparameters = sample_hyperparameters(trial, settings)
        outcome = evaluate_candidate(arch, hyperparameters, settings, trial_seed(settings, trial.number), trial.number)
        record_outcome(trial, outcome, with_constraint=settings.max_mflops is not None)
        self.line = outcome.line
        if outcome.state == "failed":
            raise TrialFailed(outcome.attrs["fail_reason"])
        if outcome.state == "early_stopped":
            raise optuna.TrialPruned(outcome.line)
        return outcome.objective_values(settings.objectives)


def run_optuna_search(settings: Settings) -> optuna.Study:
    """Run (or continue) the study of ``settings`` until it has ``budget`` finished trials."""
    context = open_search(settings)
    study = context.study
    done = count_finished(study)
    # Offset the sampler's seed by the trials already there, so a continued study does not
    # replay the random start-up candidates of the first run.
    sampler = make_sampler(settings.sampler, settings.seed + len(study.get_trials(deepcopy=False)))
    study = optuna.load_study(study_name=study.study_name, storage=context.storage, sampler=sampler)
    context.study = study
    write_run_json(context)
    progress = Progress(settings.budget, done, quiet=settings.quiet)
    if settings.baselines:
        queued = enqueue_baselines(context)
        if queued:
            progress.message(f"queued {queued} uniform baselines of {context.space.name}")
    progress.message(
        f"study '{study.study_name}' in {settings.storage_url}: {done}/{settings.budget} finished trials; "
        f"space {context.space.name} ({len(context.space.slots)} layers, {context.space.size:.3g} candidates)"
    )
    objective = _Objective(context)
    infeasible_in_a_row = failures_in_a_row = 0
    while done < settings.budget:
        # One trial per call: optimize() runs the heartbeat thread and fails (and retries)
        # trials that a killed process left RUNNING.
        study.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=False)
        frozen = study.get_trials(deepcopy=False)[objective.number]
        line = objective.line
        if frozen.state == TrialState.FAIL:
            failures_in_a_row += 1
            progress.message(line)
            if failures_in_a_row >= settings.max_failures:
                raise SearchAborted(
                    f"{failures_in_a_row} trials in a row failed (last: {frozen.user_attrs.get('fail_reason')}); "
                    "the study is kept, fix the cause and run the same command again"
                )
            continue
        failures_in_a_row = 0
        if frozen.user_attrs.get("status") == "infeasible":
            progress.message(line)
            infeasible_in_a_row += 1
            if infeasible_in_a_row >= MAX_INFEASIBLE_IN_A_ROW:
                raise SearchAborted(
                    f"{MAX_INFEASIBLE_IN_A_ROW} candidates in a row were over --max-mflops {settings.max_mflops}; raise the ceiling"
                )
            continue
        infeasible_in_a_row = 0
        done = count_finished(study)
        pareto_size, best = _front_summary(study)
        progress.trial(done, pareto_size, best, line)
    return study
