"""Opening a search's study: shared by both backends, so both write the same kind of study.

A study records what it searches (space fingerprint, dataset, objectives, training protocol
and, with the latency objective, how latency is obtained) in its user attributes. Re-running
the same command continues it; a run whose space, dataset, objectives, training protocol or
latency settings differ is refused instead of mixing results, and so is a study another
program made.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.study import StudyDirection

from models import Architecture
from search.backends.trial import evaluation_plan
from search.compat import fail_trial
from search.evaluation.candidate import EvaluationPlan
from search.evaluation.cost import architecture_cost, cheapest_and_dearest
from search.evaluation.evaluate import get_dataset, out_of_memory, out_of_memory_line
from search.files import atomic_write_text
from search.settings import TUNABLE, Settings, SettingsError, mask_url, resolve_device, scrub, url_secrets
from search.storage import (
    OBJECTIVE_SENSES,
    REPEAT_OF,
    StorageError,
    StudyMismatch,
    TrialIndex,
    TrialRecord,
    check_own_study,
    find_study,
    is_repeat,
    open_storage,
    trial_index,
)
from search.versions import package_versions
from spaces import SearchSpace, get_space

__all__ = [
    "SearchContext",
    "baseline_architectures",
    "carried_attrs",
    "enqueue_baselines",
    "fail_and_requeue",
    "retry_origin",
    "count_finished",
    "open_search",
    "package_versions",
    "sample_hyperparameters",
    "spends_budget",
    "spent_in",
    "trial_seed",
    "update_run_json",
    "write_run_json",
]

# Training settings that change what an accuracy means: they must match to share a study.
PROTOCOL_KEYS = (
    "dataset",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "label_smoothing",
    "warmup_epochs",
    "val_size",
    "split_seed",
)


@dataclass
class SearchContext:
    settings: Settings
    space: SearchSpace
    study: optuna.Study
    storage: optuna.storages.BaseStorage
    reference: dict[str, float]
    plan: EvaluationPlan  # how this process evaluates a candidate (device resolved once)


def _protocol(settings: Settings) -> dict[str, Any]:
    training = settings.training.to_json()
    # A swept hyperparameter's fixed value is never used, so it does not have to match.
    protocol = {key: "tuned" if key in settings.tune else training[key] for key in PROTOCOL_KEYS}
    protocol["tune"] = sorted(settings.tune)
    return protocol


def _latency_setting(settings: Settings, device: torch.device) -> dict[str, Any]:
    """What a latency_ms value means: how it is obtained, at which batch size, on which kind
    of device (cpu, cuda, ...). Values that differ in any of these do not compare."""
    return {"method": settings.scoring.latency, "batch": settings.scoring.latency_batch, "device": device.type}


def _differences(path: str, old: Any, new: Any) -> list[str]:
    """Where two attribute values differ, down to the leaf keys, as short text."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += _differences(f"{path}.{key}", old.get(key, "(none)"), new.get(key, "(none)"))
        return found
    if old == new:
        return []

    def show(value: Any) -> str:
        text = json.dumps(value, sort_keys=True)
        return text if len(text) <= 60 else text[:57] + "..."

    return [f"{path}: study has {show(old)}, this run {show(new)}"]


def _check_compatible(study: optuna.Study, expected: dict[str, Any]) -> None:
    attrs = study.user_attrs
    differing = [key for key, value in expected.items() if attrs.get(key) != value]
    if differing:
        found = [d for key in differing for d in _differences(key, attrs.get(key, "(none)"), expected[key])]
        # Per-layer choice lists follow from model and width: name them last and as one item.
        choices = [d for d in found if d.startswith("space.choices.")]
        found = [d for d in found if not d.startswith("space.choices.")]
        if choices:
            found.append(f"space.choices: the choices of {len(choices)} layers")
        details = "; ".join(found[:4]) + (f"; and {len(found) - 4} more" if len(found) > 4 else "")
        raise StudyMismatch(
            f"study '{study.study_name}' exists with a different {', '.join(differing)} ({details}); "
            "use the same options to continue it, or --study-name NEW to start another"
        )


def open_search(settings: Settings, heartbeat: bool = True, device: torch.device | None = None) -> SearchContext:
    """Load the data (fail fast when it is missing), build the space, and open or create the
    study, checking that an existing study searches the same thing. ``device``: where this
    process evaluates candidates (and measures the reference latency); resolved from
    ``--device`` when not given."""
    data = get_dataset(settings.training)
    space = get_space(settings.space, width=settings.width, num_classes=data.num_classes)
    dense = architecture_cost(space.dense())
    cheapest = architecture_cost(cheapest_and_dearest(space)[0])
    if settings.max_mflops is not None and settings.max_mflops < cheapest.mflops:
        raise SettingsError(
            f"--max-mflops {settings.max_mflops} is below the cheapest candidate of {space.name} "
            f"({cheapest.mflops:.2f} MFLOPs); raise it or drop it"
        )
    storage = open_storage(settings.storage_url, heartbeat=heartbeat)
    device = resolve_device(settings.training.device) if device is None else device
    expected = {
        "space": space.fingerprint(),  # first: a study with it was made by this tool (check_own_study)
        "dataset": settings.training.dataset,
        "objectives": list(settings.objectives),
        "protocol": _protocol(settings),
        **({"latency": _latency_setting(settings, device)} if "latency_ms" in settings.objectives else {}),
    }
    directions = [
        StudyDirection.MAXIMIZE if OBJECTIVE_SENSES[o] == "max" else StudyDirection.MINIMIZE
        for o in settings.objectives
    ]
    study = find_study(storage, settings.study) or optuna.create_study(
        storage=storage,
        study_name=settings.study,
        directions=directions,
        load_if_exists=True,  # another worker may create it at the same moment
    )
    check_own_study(study, settings.storage_url, "--study-name", directions)
    existing = "space" in study.user_attrs
    if existing:  # refused before the plan is made: a latency table it may build takes minutes
        _check_compatible_or_initialise(study, expected, space, dense, settings.training.to_json())
    plan = evaluation_plan(settings, space, device)
    reference_ms = None
    if plan.latency is not None and "latency_ms" not in study.user_attrs.get("reference_point", {}):
        reference_ms = _reference_latency(plan, space, settings)
    if not existing:  # a new study is set up only once its plan and reference latency could be made
        _check_compatible_or_initialise(study, expected, space, dense, settings.training.to_json())
    if reference_ms is not None and "latency_ms" not in study.user_attrs["reference_point"]:
        study.set_user_attr("reference_point", {**study.user_attrs["reference_point"], "latency_ms": reference_ms})
    if study.user_attrs.get("confirm") != settings.confirm:  # what the report calls confirmed
        study.set_user_attr("confirm", settings.confirm)
    reference = dict(study.user_attrs["reference_point"])
    return SearchContext(settings, space, study, storage, reference, plan)


def _reference_latency(plan: EvaluationPlan, space: SearchSpace, settings: Settings) -> float:
    """The dense model's latency (the reference point's), with one line where the device has
    not the memory for ``--latency-batch``."""
    assert plan.latency is not None
    try:
        return plan.latency(space.dense())
    except RuntimeError as err:  # torch.OutOfMemoryError is one
        if not out_of_memory(err):
            raise
        batch = settings.scoring.latency_batch
        raise SettingsError(out_of_memory_line("--latency-batch", batch, "timing the dense model", err)) from None


# The attribute a study's creator writes last: a study without it is still being set up.
INITIALISED = "created"
# How long a process waits for another one to finish setting up a study they both opened.
INITIALISE_WAIT_SECONDS = 60


def _check_compatible_or_initialise(
    study: optuna.Study, expected: dict[str, Any], space: SearchSpace, dense, training: dict[str, Any]
) -> None:
    if "space" in study.user_attrs:  # an existing study (or one a parallel worker just created)
        _wait_until_initialised(study)
        # A study made before the latency settings were recorded: what its trials used is not
        # known, so this run's settings become the study's (once the rest matches).
        unrecorded = "latency" in expected and "latency" not in study.user_attrs
        _check_compatible(
            study, {key: value for key, value in expected.items() if not (unrecorded and key == "latency")}
        )
        if unrecorded:
            study.set_user_attr("latency", expected["latency"])
        return
    for key, value in expected.items():
        study.set_user_attr(key, value)
    study.set_user_attr("space_name", space.name)
    study.set_user_attr("model", space.model)
    study.set_user_attr("width", space.width)
    # Fixed per study so that hypervolumes of two studies of the same space compare.
    study.set_user_attr("reference_point", {"accuracy": 0.0, "mflops": dense.mflops, "params": float(dense.params)})
    study.set_user_attr("dense_cost", dense.to_json())
    study.set_user_attr("training", training)
    study.set_metric_names(list(expected["objectives"]))
    study.set_user_attr(INITIALISED, datetime.now(timezone.utc).isoformat(timespec="seconds"))  # last: see above


def _wait_until_initialised(study: optuna.Study) -> None:
    """Wait while another process that has just created the study is still writing its
    attributes (machines started together on a new database): "space" is written first, and
    ``INITIALISED`` last."""
    deadline = time.monotonic() + INITIALISE_WAIT_SECONDS
    while INITIALISED not in study.user_attrs:
        if time.monotonic() > deadline:
            raise StorageError(
                f"study '{study.study_name}' was created by another process that did not finish setting it up "
                f"in {INITIALISE_WAIT_SECONDS} s; if that process died, start again with --study-name NEW"
            )
        time.sleep(0.2)


def write_run_json(context: SearchContext, extra: dict[str, Any] | None = None) -> Path:
    settings = context.settings
    path = settings.study_dir / "run.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    secrets = url_secrets(settings.storage, settings.ray_storage, settings.ray_address)
    masked = {name: mask_url(getattr(settings, name)) for name in ("storage", "ray_storage", "ray_address")}
    payload = {
        "study": settings.study,
        "storage": mask_url(settings.storage_url),  # passwords are never written
        "settings": {**settings.to_json(), **masked},
        "space": {
            "name": context.space.name,
            "model": context.space.model,
            "width": context.space.width,
            "layers": len(context.space.slots),
            "size": context.space.size,
        },
        "reference_point": context.reference,
        "versions": package_versions(),
        "command": [scrub(arg, secrets) for arg in sys.argv],
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def update_run_json(study_dir: Path, extra: dict[str, Any]) -> None:
    """Add what a run found (its noise, its front) to the ``run.json`` it wrote when it started."""
    path = study_dir / "run.json"
    try:
        payload = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        payload = {}
    payload.update(extra, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2, default=str))


def spends_budget(trial: TrialRecord) -> bool:
    """Whether a trial spent budget: trained to the end (complete and feasible) or
    early-stopped. Infeasible candidates (over --max-mflops), failed trials and confirmation
    runs (``--confirm``: repeats of a configuration already trained) do not."""
    finished = trial.state in ("COMPLETE", "PRUNED")
    return finished and trial.user_attrs.get("status", "ok") in ("ok", "early_stopped") and not is_repeat(trial)


def _count_spent(count: int, trial: TrialRecord) -> int:
    return count + spends_budget(trial)


def count_finished(study: optuna.Study) -> int:
    """Trials that spent budget (:func:`spends_budget`)."""
    return spent_in(trial_index(study))


def spent_in(index: TrialIndex) -> int:
    """Trials that spent budget among those ``index`` has read (no new read), counted once
    per finished trial (:meth:`search.storage.TrialIndex.fold`)."""
    return index.fold(_count_spent, int)


def trial_seed(settings: Settings, trial_number: int) -> int:
    return settings.seed * 100_003 + trial_number


def sample_hyperparameters(trial: Any, settings: Settings) -> dict[str, Any]:
    """Training hyperparameters of a ``--tune`` sweep (prefixed ``hp_`` in the study)."""
    chosen: dict[str, Any] = {}
    for name in settings.tune:
        kind, bounds = TUNABLE[name]
        if kind == "log":
            chosen[name] = trial.suggest_float(f"hp_{name}", *bounds, log=True)
        elif kind == "float":
            chosen[name] = trial.suggest_float(f"hp_{name}", *bounds)
        else:
            chosen[name] = trial.suggest_categorical(f"hp_{name}", list(bounds))
    return chosen


def baseline_architectures(space: SearchSpace) -> dict[str, Architecture]:
    """Uniform configurations and named baselines (published models) of the space, one per
    distinct architecture. Only candidates of the space can be trials of its study, so the
    dense model is a baseline where ``dense`` is a choice (vgg_mixed); elsewhere P = 1 or
    G = 1 is the dense-equivalent baseline."""
    result: dict[str, Architecture] = {}
    for value in space.baseline_values():
        arch = space.uniform(value)
        if space.contains(arch) and arch not in result.values():
            result[value] = arch
    return result


def enqueue_baselines(context: SearchContext) -> tuple[int, str | None]:
    """Queue the uniform configurations not yet in the study (once, also across re-runs), as
    ``--baselines`` says: always (True), never (False) or, by default (None), when they take at
    most half of ``--budget`` (a smaller budget would be spent on them alone). Returns how many
    were queued and, when the default left them out, the line that says so."""
    settings, study = context.settings, context.study
    baselines = baseline_architectures(context.space)
    if settings.baselines is False or not baselines:
        return 0, None
    if settings.baselines is None and 2 * len(baselines) > settings.budget:
        return 0, (
            f"uniform baselines not queued: the {len(baselines)} of {context.space.name} would take more than half "
            f"of --budget {settings.budget}; --baselines queues them anyway, --no-baselines leaves them out quietly"
        )
    present = {r.baseline for r in trial_index(study).records()}
    queued = 0
    for value, arch in baselines.items():
        if value not in present:
            study.enqueue_trial(context.space.to_params(arch), user_attrs={"baseline": value})
            queued += 1
    return queued, None


def carried_attrs(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """What a queued copy of ``trial`` (a retry, a repeat) keeps of it: whether it is a
    baseline and which configuration it repeats."""
    return {key: trial.user_attrs[key] for key in ("baseline", REPEAT_OF) if key in trial.user_attrs}


def retry_origin(study: optuna.Study, number: int) -> int:
    """The trial a retry repeats (following retries of retries), or ``number`` itself.

    Retries come from Optuna's stale-trial callback (system attribute ``failed_trial``) or
    from :func:`fail_and_requeue` (user attribute ``retry_of``)."""
    index = trial_index(study)
    seen = set()
    while number not in seen:
        seen.add(number)
        parent = index.parent(number)
        if parent is None:
            return number
        number = parent
    return number


def fail_and_requeue(
    study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str, parameters: set[str] | None = None
) -> None:
    """Fail a trial that cannot finish (its process is stopping, or its driver died) and
    queue its configuration once more (a retry is not retried again this way). With
    ``parameters`` (the names a candidate has), a trial stopped while its candidate was still
    being sampled is only failed: it never had a whole configuration to repeat."""
    fail_trial(study, trial, reason)
    already_retried = any(r.user_attrs.get("retry_of") == trial.number for r in trial_index(study).records())
    whole = bool(trial.params) and (parameters is None or parameters <= set(trial.params))
    if whole and not already_retried and "retry_of" not in trial.user_attrs:
        study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number, **carried_attrs(trial)})
