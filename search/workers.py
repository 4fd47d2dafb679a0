"""``--workers N``: N worker processes on this machine, one study.

Each worker is an ordinary Optuna-backend search on the same storage (budget slots are
taken under a lock, see :mod:`search.budget`). On a machine with several GPUs worker i sees
only GPU ``i mod n_gpus``, so trials never share a device by accident.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

import optuna

from .errors import SearchAborted
from .settings import Settings

__all__ = ["run_workers"]


def _worker(settings: Settings, gpu: int | None) -> None:
    if gpu is not None:  # before anything touches CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    from .optuna_driver import run_optuna_search
    from .quiet import quiet_libraries

    quiet_libraries()

    try:
        run_optuna_search(settings)
    except SearchAborted as err:
        print(f"worker {settings.worker_index}: error: {err}", file=sys.stderr)
        sys.exit(1)


def run_workers(settings: Settings) -> optuna.Study:
    import torch

    from .study import open_search, write_run_json

    # Create (or check) the study once here, so workers never race to create it.
    write_run_json(open_search(settings, heartbeat=False), {"workers": settings.workers})
    gpus = torch.cuda.device_count()
    context = multiprocessing.get_context("spawn")  # no CUDA or thread state copied by fork
    processes = []
    for index in range(settings.workers):
        worker_settings = settings.replace(worker_index=index)
        process = context.Process(target=_worker, args=(worker_settings, index % gpus if gpus else None))
        process.start()
        processes.append(process)
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        for process in processes:
            process.terminate()
        for process in processes:
            process.join()
        raise
    failed = [i for i, p in enumerate(processes) if p.exitcode != 0]
    if failed:
        raise SearchAborted(f"worker(s) {', '.join(map(str, failed))} stopped with an error; the study is kept")
    from .storage import find_study, open_storage

    study = find_study(open_storage(settings.storage_url), settings.study)
    assert study is not None  # open_search created it
    return study
