"""The Ray Tune backend: the same search on multi-GPU, multi-node clusters.

Ray schedules the trials; Optuna (through Ray's ``OptunaSearch``) samples them and the study
in the Optuna storage stays the single source of truth, so the dashboard, ``report`` and
``export`` work unchanged. Every trial runs the shared :func:`search.evaluation.candidate.evaluate_candidate`
and sends its :class:`Outcome` back in its last report; the driver writes it into the study.

Resuming: the study, not Ray's experiment folder, says what is done. Re-running the same
command after the driver was killed fails the trials the dead driver left RUNNING, queues
their configurations once more, and runs only the trials the budget still needs.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.backends.confirm import take_repeat
from search.backends.progress import Progress
from search.backends.ray_cluster import join_ray_cluster
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
from search.backends.trial import (
    checkpoint_path,
    evaluation_plan,
    hyperparameters_of,
    rung_peers,
    stopped_outcome,
    tell_outcome,
)
from search.compat import ray_searcher_completed, ray_searcher_study, ray_searcher_trials, study_storage
from search.errors import SearchAborted
from search.evaluation.candidate import Outcome, evaluate_candidate, failed_outcome
from search.evaluation.cost import architecture_cost
from search.evaluation.train import EpochRecord
from search.reporting.front import front_summary
from search.settings import Settings, mask_url, resolve_device
from search.storage import OBJECTIVE_SENSES, REPEAT_OF
from search.strategies.early_stopping import RungResult, early_stop_line, rung_attr, stopping_rule
from spaces import SearchSpace

__all__ = ["recover_orphaned_trials", "run_ray_search"]

# Quiet, local-friendly Ray defaults; any value the user exported wins. Worker niceness 0:
# Ray starts its workers at nice 15, and training is the work here; beside another busy
# process a niced trial got 4 % of a core (the Optuna backend's trials run at nice 0). It
# applies to the Ray the driver starts; a cluster's nodes keep their own setting.
_RAY_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_worker_niceness": "0",
}


class _SampleCandidate:
    """Ray's define-by-run space: sample the layers (and ``--tune`` hyperparameters) on the
    Optuna trial. A class instance rather than a closure, since Ray pickles its searcher."""

    def __init__(self, space: SearchSpace, settings: Settings) -> None:
        self.space = space
        self.settings = settings

    def __call__(self, trial: Any) -> dict[str, Any]:
        self.space.sample(trial)
        sample_hyperparameters(trial, self.settings)
        # A retry keeps its original's seed and checkpoint, as in the Optuna backend.
        return {"trial_number": trial.number, "origin_number": retry_origin(trial.study, trial.number)}


def _train_candidate(config: dict[str, Any], space: SearchSpace, settings: Settings) -> None:
    """The Ray trainable: one candidate through the shared evaluation path, per-epoch
    metrics to Ray, and the outcome in the last report."""
    import ray
    from ray import tune

    number, origin = int(config["trial_number"]), int(config["origin_number"])
    arch = space.from_params(config)
    training = settings.training
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    if not gpu_ids:
        # No GPU share from Ray: never touch a GPU another trial was given.
        training = training.replace(device="cpu")
    cpus = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if cpus > 0 and training.threads is None:
        training = training.replace(threads=cpus)
    settings = settings.replace(training=training)
    # Resolved here, on the node that runs the trial: the driver's device may not exist here.
    plan = evaluation_plan(settings, space, resolve_device(training.device))

    cost = architecture_cost(arch)  # cached: evaluate_candidate's own count reuses it

    def report_epoch(record: EpochRecord, costs: dict[str, float]) -> None:
        # Every report carries every objective (Ray checks it) with the accuracy so far, and
        # the whole epoch record, so the driver can record an early-stopped trial's curve.
        epoch = {k: float("nan") if v is None else v for k, v in record.to_json().items()}
        tune.report({**epoch, **cost.to_json(), **costs, "accuracy": epoch["val_accuracy"]})

    outcome = evaluate_candidate(
        arch,
        hyperparameters_of(config),
        plan,
        trial_seed(settings, origin),
        number,
        on_epoch=report_epoch,
        checkpoint=checkpoint_path(settings, origin),
    )
    # Where it ran, so placement on a cluster can be checked afterwards.
    outcome.attrs.update(ray_node_id=ray.get_runtime_context().get_node_id(), ray_gpu_ids=gpu_ids)
    values = outcome.values or {}
    tune.report(
        {**{name: float(values.get(name, float("nan"))) for name in settings.objectives}, "outcome": outcome.to_json()}
    )


def _make_scheduler(context: SearchContext):
    """A Ray TrialScheduler running the shared early-stopping rule (search/strategies/early_stopping.py)."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    settings = context.settings
    rule = stopping_rule(settings.early_stopping)
    # Trials of earlier runs of this study count as peers at their rungs too.
    # Keys are Optuna trial numbers, as in the Optuna backend, so ties break the same way.
    recorded: dict[int, list[RungResult]] = {epoch: rung_peers(context.study, epoch) for epoch in rule.rungs}

    class MultiObjectiveASHAScheduler(FIFOScheduler):
        def __init__(self) -> None:
            super().__init__()
            self.stopped: dict[str, int] = {}  # Ray trial id -> rung where it stopped

        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            epoch = int(result.get("epoch", 0))
            if not rule.is_rung(epoch):
                return TrialScheduler.CONTINUE
            values = tuple(float(result[o]) for o in settings.objectives)
            number = int(trial.config["trial_number"])
            peers = recorded.setdefault(epoch, [])
            keep = rule.decide(epoch, number, values, peers)
            peers.append(RungResult(number, values))
            if keep:
                return TrialScheduler.CONTINUE
            self.stopped[trial.trial_id] = epoch
            return TrialScheduler.STOP

    return MultiObjectiveASHAScheduler()


def _make_searcher(
    context: SearchContext, progress: Progress, done: list[int], scheduler=None, confirming: bool = False
):
    """The searcher of one Tuner round. ``confirming``: the round after the budget that runs
    ``--confirm``'s repeats (:func:`search.backends.confirm.take_repeat` picks each one; the
    sampler proposes nothing), and ends the round once confirmation is over."""
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    settings = context.settings
    rule = stopping_rule(settings.early_stopping)

    class StudySearcher(OptunaSearch):
        """OptunaSearch that records each trial's outcome (attributes, constraint, state)
        exactly as the Optuna backend does, and prints progress."""

        curves: dict[str, list[dict]] = {}
        remaining: dict[str, int] = {}  # confirming: runs the plan still wanted when a repeat started

        def suggest(self, trial_id: str):
            if confirming and trial_id not in ray_searcher_trials(self):
                study = ray_searcher_study(self)
                slot = take_repeat(
                    study, settings.storage_url, list(settings.objectives), settings.confirm, settings.race
                )
                if slot.trial is None:  # None: ask again once a running repeat has finished
                    return Searcher.FINISHED if slot.done else None
                ray_searcher_trials(self)[trial_id] = slot.trial
                self.remaining[trial_id] = max(slot.plan.remaining - 1, 0)
            return super().suggest(trial_id)

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if trial_id not in ray_searcher_trials(self) or "epoch" not in result:
                return
            curve = self.curves.setdefault(trial_id, [])
            if curve and curve[-1]["epoch"] >= result["epoch"]:
                return  # seen already (Tune repeats the last result at completion)
            curve.append(result)
            if rule is not None and rule.is_rung(int(result["epoch"])):
                values = [float(result[o]) for o in settings.objectives]
                ray_searcher_trials(self)[trial_id].set_user_attr(rung_attr(int(result["epoch"])), values)

        def _stopped_outcome(self, trial_id: str, rung: int) -> Outcome:
            trial = ray_searcher_trials(self)[trial_id]
            return stopped_outcome(
                trial.number,
                context.space.from_params(trial.params),
                self.curves.get(trial_id, []),
                trial_seed(settings, retry_origin(ray_searcher_study(self), trial.number)),
                hyperparameters_of(trial.params),
                rung,
            )

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in ray_searcher_completed(self) or trial_id not in ray_searcher_trials(self):
                return
            trial = ray_searcher_trials(self)[trial_id]
            if result:  # the result that made the scheduler stop the trial reaches only here
                self.on_trial_result(trial_id, result)
            if scheduler is not None and trial_id in scheduler.stopped:
                outcome = self._stopped_outcome(trial_id, scheduler.stopped[trial_id])
            elif result and "outcome" in result:
                outcome = Outcome.from_json(result["outcome"])
            else:
                reason = "the Ray trial errored on every attempt (see Ray's logs)" if error else "no result from Ray"
                outcome = failed_outcome(trial.number, reason)
            with_constraint = settings.max_mflops is not None
            tell_outcome(ray_searcher_study(self), trial, outcome, settings.objectives, with_constraint)
            ray_searcher_completed(self).add(trial_id)
            self.curves.pop(trial_id, None)
            if confirming and outcome.state == "complete":
                line = outcome.line.replace(
                    f"trial {trial.number}:", f"trial {trial.number} (repeat of #{trial.user_attrs[REPEAT_OF]}):", 1
                )
                progress.repeat(front_summary(ray_searcher_study(self)), self.remaining.pop(trial_id, 0), line)
            elif outcome.state in ("complete", "early_stopped"):
                done[0] = count_finished(ray_searcher_study(self))
                progress.trial(done[0], front_summary(ray_searcher_study(self)), outcome.line)
            else:
                progress.message(outcome.line)

    return StudySearcher(
        space=_SampleCandidate(context.space, settings),
        metric=list(settings.objectives),
        mode=[OBJECTIVE_SENSES[o] for o in settings.objectives],
        sampler=study_sampler(settings, context.study, shared=False),
        storage=study_storage(context.study),  # the open study's: its trials are read once
        study_name=context.study.study_name,
    )


def recover_orphaned_trials(study: optuna.Study, space: SearchSpace) -> int:
    """Fail the trials a killed driver left RUNNING and queue each whole configuration once
    more. Assumes one Ray driver per study (docs/cluster.md says so)."""
    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    layers = {slot.name for slot in space.slots}
    for trial in orphans:
        fail_and_requeue(study, trial, "the driver stopped before the trial finished", layers)
    return len(orphans)


def _init_ray(settings: Settings) -> bool:
    """Connect to ``--address`` or start a local Ray; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    for key, value in _RAY_ENV.items():
        os.environ.setdefault(key, value)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if settings.ray.address:
        join_ray_cluster(settings.ray.address, **kwargs)  # bounded: a wrong address is one line, soon
    else:
        # "local": always a private Ray, never one found through RAY_ADDRESS or the address
        # file that `ray start` leaves behind.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local Ray needs no token
        ray.init(address="local", **kwargs)
    return True


def run_ray_search(settings: Settings) -> optuna.Study:
    """Run (or continue) the study of ``settings`` with Ray Tune until ``budget`` trials finished."""
    from ray import tune

    # Ray runs each trial in its own working directory: relative paths must not reach it.
    settings = settings.replace(
        results_dir=str(Path(settings.results_dir).resolve()),
        training=settings.training.replace(data_dir=str(Path(settings.training.data_dir).resolve())),
    )
    # A cluster of --address is joined first: one that does not take this driver ends the run
    # before a study exists. A private local Ray starts once the study has been checked.
    started_ray = _init_ray(settings) if settings.ray.address else False
    try:
        context = open_search(settings, heartbeat=False)
        study = context.study
        recovered = recover_orphaned_trials(study, context.space)
        done = [count_finished(study)]
        write_run_json(context, {"backend": "ray"})
        progress = Progress(settings.budget, done[0], quiet=settings.quiet)
        if recovered:
            progress.message(f"{recovered} trial(s) left running by a stopped driver were failed and queued again")
        queued, note = enqueue_baselines(context)
        if note:
            progress.message(note)
        started_ray = _init_ray(settings) or started_ray
        storage_path = settings.ray.storage or str((settings.study_dir / "ray").resolve())
        if "://" not in storage_path:
            Path(storage_path).mkdir(parents=True, exist_ok=True)
        progress.message(
            f"study '{study.study_name}' in {mask_url(settings.storage_url)}: {done[0]}/{settings.budget} finished trials; "
            f"Ray results in {storage_path}; {early_stop_line(settings.early_stopping)}"
        )
        gpus = settings.ray.gpus_per_trial
        if gpus is None:  # default: one GPU per trial where the cluster has GPUs
            import ray

            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        resources = {"cpu": settings.ray.cpus_per_trial, "gpu": gpus}
        trainable = tune.with_resources(
            tune.with_parameters(_train_candidate, space=context.space, settings=settings), resources
        )

        def fit(searcher, scheduler, samples: int) -> None:
            tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    scheduler=scheduler,
                    num_samples=samples,
                    max_concurrent_trials=settings.ray.max_concurrent,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=f"{study.study_name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}",
                    storage_path=storage_path,
                    failure_config=tune.FailureConfig(max_failures=settings.ray.retries),
                    verbose=0,
                ),
            ).fit()

        rounds_without_progress = 0
        while done[0] < settings.budget:
            before = done[0]
            scheduler = _make_scheduler(context) if settings.stops_early else None
            fit(_make_searcher(context, progress, done, scheduler), scheduler, settings.budget - done[0])
            done[0] = count_finished(study)
            rounds_without_progress = rounds_without_progress + 1 if done[0] == before else 0
            if rounds_without_progress >= 2:
                raise SearchAborted(
                    "a whole Ray round finished no trial (all failed or infeasible); see the failed trials' fail_reason"
                )
        if settings.confirm:
            # Never early-stopped (only a full training is a run); the searcher ends the round.
            progress.start_confirmation(settings.confirm, settings.training.epochs)
            bound = (settings.confirm + settings.race) * max(1, len(study.get_trials(deepcopy=False)))
            fit(_make_searcher(context, progress, done, confirming=True), None, bound)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return study
