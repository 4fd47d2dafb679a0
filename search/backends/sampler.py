"""The Optuna sampler of a search and its seed, the same for every backend (Optuna, Ray, one-shot)."""

from __future__ import annotations

import os
import socket
import zlib

import optuna

from search.backends.windowed_tpe import WindowedTPESampler
from search.settings import Settings
from search.storage import trial_index

__all__ = ["TPE_WINDOW", "make_sampler", "sampler_seed", "study_sampler"]

# Trials TPE models per sample: beyond this its cost stops growing with the study (the study's
# best trials are always among them; see WindowedTPESampler). Searches of up to this many
# trials sample exactly as Optuna's TPE does.
TPE_WINDOW = 1000


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler ``--sampler name`` names, seeded with ``seed``."""
    if name == "tpe":
        return WindowedTPESampler(window=TPE_WINDOW, seed=seed, multivariate=True, n_startup_trials=10)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")


def sampler_seed(settings: Settings, study: optuna.Study, shared: bool) -> int:
    """The sampler's seed: offset by the trials already there, so that a continued study does
    not replay the first run's random start-up candidates.

    ``shared``: several processes may sample this study at once (the Optuna backend:
    ``--workers``, or the same command on several machines). Then the worker is mixed in, and
    on a server storage the host and process too, or every process would propose the same
    candidates. The Ray driver and the one-shot search are one process per study."""
    seed = settings.seed + len(trial_index(study).records())
    if not shared:
        return seed
    seed += 1000 * (settings.worker_index or 0)
    if not settings.storage_url.startswith("sqlite"):
        seed += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 1_000_000
    return seed


def study_sampler(settings: Settings, study: optuna.Study, shared: bool) -> optuna.samplers.BaseSampler:
    """The sampler of ``settings``, seeded for ``study`` as it is now (see :func:`sampler_seed`)."""
    return make_sampler(settings.sampler, sampler_seed(settings, study, shared))
