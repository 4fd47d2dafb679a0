"""Settings of a search: one typed record that the CLI fills, and its parts by concern that
the later steps read.

:class:`Settings` is the run's full record: ``run_search.py`` builds it from the options and
presets, it validates itself on construction (before anything touches a storage or the
disk), and run.json stores it whole (``Settings.to_json()``). Each step takes only its part,
a frozen view made on demand (properties, not fields, so the record is unchanged):

- ``settings.training`` -> :class:`TrainingSettings`: search.evaluation (training, data);
  search.reporting.export and search.artifacts read one from a study or an exported config;
- ``settings.storage_target`` -> :class:`StorageTarget` (storage URL, study name, results
  folder): search.storage (its ``url``), search.commands (the outputs' folder; report and
  export build one for a study that must exist), search.backends.study;
- ``settings.scoring`` -> :class:`Scoring` (objectives, latency, FLOPs ceiling): what
  search.backends.trial.evaluation_plan hands search.evaluation (which never sees Settings);
- ``settings.early_stopping`` -> :class:`EarlyStopping` (mode, rungs, epochs): the
  ``stopping_rule`` and ``early_stop_line`` of search.strategies.early_stopping;
- ``settings.one_shot`` -> :class:`OneShotSettings`: search.backends.one_shot;
- ``settings.local_workers`` -> :class:`LocalWorkers`: search.backends.workers;
- ``settings.ray`` -> :class:`RaySettings`: search.backends.ray_driver.

The drivers in search.backends orchestrate the whole run and take the whole ``Settings``
(the shortcuts ``study``, ``storage_url``, ``study_dir``, ``stops_early`` read its parts),
and hand each step below them its part.

Modules (private; import from ``search.settings``):

- ``_options``: the option tables (samplers, objectives and their senses, data sets and their
  classes, tunable hyperparameters, presets);
- ``_validation``: the validation table (``NUMBERS``, ``CHOICES``) and the ``check_*`` rules;
- ``_device``: which device ``--device`` names and whether this machine has it;
- ``_secrets``: passwords in storage URLs (masked, scrubbed);
- ``_training``, ``_run``, ``_parts``: ``TrainingSettings``, ``Settings`` and its parts.

This is the bottom step of search/: it imports nothing else of search (torch only inside
the device functions).
"""

from __future__ import annotations

from search.settings._device import check_device_available, resolve_device
from search.settings._options import (
    BACKENDS,
    CUDA_GRAPH_MODES,
    DATASET_CLASSES,
    DATASETS,
    EARLY_STOP_MODES,
    LATENCY_MODES,
    OBJECTIVE_ALIASES,
    OBJECTIVE_SENSES,
    OBJECTIVES,
    PRESETS,
    SAMPLERS,
    STRATEGIES,
    TUNABLE,
)
from search.settings._parts import (
    EarlyStopping,
    LocalWorkers,
    OneShotSettings,
    RaySettings,
    Scoring,
    StorageTarget,
    default_storage_url,
)
from search.settings._run import Settings
from search.settings._secrets import mask_url, scrub, url_secrets
from search.settings._training import TrainingSettings
from search.settings._validation import (
    CHOICES,
    INT_MAX,
    NUMBERS,
    SEED_MAX,
    Number,
    SettingsError,
    check_choice,
    check_device,
    check_number,
    check_ray_address,
    check_study_name,
    check_text,
    option_name,
)

__all__ = [
    "BACKENDS",
    "CHOICES",
    "CUDA_GRAPH_MODES",
    "DATASETS",
    "DATASET_CLASSES",
    "EARLY_STOP_MODES",
    "INT_MAX",
    "LATENCY_MODES",
    "NUMBERS",
    "Number",
    "OBJECTIVES",
    "OBJECTIVE_ALIASES",
    "OBJECTIVE_SENSES",
    "PRESETS",
    "SAMPLERS",
    "SEED_MAX",
    "STRATEGIES",
    "TUNABLE",
    "EarlyStopping",
    "LocalWorkers",
    "OneShotSettings",
    "RaySettings",
    "Scoring",
    "Settings",
    "SettingsError",
    "StorageTarget",
    "TrainingSettings",
    "check_choice",
    "check_device",
    "check_device_available",
    "check_number",
    "check_ray_address",
    "check_study_name",
    "check_text",
    "default_storage_url",
    "mask_url",
    "option_name",
    "resolve_device",
    "scrub",
    "url_secrets",
]
