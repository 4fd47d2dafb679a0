"""What each command of ``run_search.py`` does, behind the argument parsing."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from search.evaluation.cost import architecture_cost, cheapest_and_dearest
from search.settings import (
    Settings,
    StorageTarget,
    check_device_available,
    check_number,
    check_study_name,
    check_text,
    mask_url,
)
from spaces import get_space, space_names

__all__ = [
    "check_output_dir",
    "check_search",
    "deploy_config",
    "export",
    "flops_rows",
    "print_spaces",
    "print_table",
    "report",
    "retrain",
    "run_search",
    "say_summary",
    "search",
    "space_rows",
    "write_outputs",
]


def flops_rows(space_name: str, uniform: str, width: float | None, num_classes: int = 10) -> list[dict[str, Any]]:
    """One row per uniform model: ``uniform`` is a value, ``dense`` or ``all``."""
    space = get_space(space_name, width=width, num_classes=num_classes)
    values = space.uniform_values() if uniform == "all" else [uniform]
    rows = []
    for value in values:
        cost = architecture_cost(space.uniform(value))
        rows.append(
            {
                "space": space.name,
                "uniform": value,
                "mflops": round(cost.mflops, 4),
                "mflops_all_ops": round(cost.mflops_all_ops, 4),
                "params": cost.params,
            }
        )
    return rows


def space_rows(width: float | None, extra: list[str] | None = None) -> list[dict[str, Any]]:
    """Every built-in space (and any space files given) with its size and MFLOPs range, and
    (``unfit``) the file's choices some layers cannot take, with those layers."""
    rows = []
    for name in [*space_names(), *(extra or [])]:
        space = get_space(name, width=width)
        low, high = (architecture_cost(a).mflops for a in cheapest_and_dearest(space))
        rows.append(
            {
                "space": space.name,
                "model": space.model,
                "width": space.width,
                "layers": len(space.slots),
                "size": f"{space.size:.3g}",
                "mflops_min": round(low, 2),
                "mflops_max": round(high, 2),
                "description": space.description,
                "unfit": {label: list(layers) for label, layers in space.unfit},
            }
        )
    return rows


def print_spaces(rows: list[dict[str, Any]], as_json: bool = False, out=sys.stdout) -> None:
    """The ``spaces`` table, then a line for every choice of a space file that some layers
    cannot take (it is no choice there); JSON has them as ``unfit``."""
    if as_json:
        print_table(rows, True, out)
        return
    print_table([{k: v for k, v in row.items() if k != "unfit"} for row in rows], False, out)
    for row in rows:
        for label, layers in row["unfit"].items():
            print(f"{row['space']}: {label} does not fit {', '.join(layers)} (not a choice there)", file=out)


def print_table(rows: list[dict[str, Any]], as_json: bool = False, out=sys.stdout) -> None:
    if as_json:
        print(json.dumps(rows, indent=2), file=out)
        return
    if not rows:
        return
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns).rstrip(), file=out)
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns).rstrip(), file=out)


def check_output_dir(results_dir: str) -> None:
    """``--results-dir`` must be a folder, or creatable as one (checked before a storage is
    opened, so a run that cannot write its outputs never creates a study)."""
    from search.errors import UserError

    try:
        _check_output_dir(Path(results_dir))
    except OSError as err:  # e.g. a name too long for the file system
        raise UserError(f"--results-dir {results_dir} cannot be used: {err.strerror}") from None


def _check_output_dir(path: Path) -> None:
    from search.errors import UserError

    results_dir = str(path)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"--results-dir {results_dir} is a file, not a folder; give a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"--results-dir {results_dir} is not writable; give a folder you can write to")
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--results-dir {results_dir} cannot be created ({parent} is not a writable folder)")


def check_search(settings: Settings) -> None:
    """Everything about a search that can be checked before a storage or the disk is touched:
    the options (Settings validates itself), the device, the space (and its file), the results
    folder, an explicit storage URL and the Ray cluster of ``--address`` (that a Ray head
    answers there: ``ray.init`` would retry for minutes). The data are checked next, by
    loading them."""
    from search.evaluation.data import num_classes_of
    from search.storage import check_storage_url

    check_device_available(settings.training.device)
    get_space(settings.space, width=settings.width, num_classes=num_classes_of(settings.training.dataset))
    target = settings.storage_target
    check_output_dir(target.results_dir)
    check_storage_url(target.url, "explicit" if target.explicit else "default")
    if settings.backend == "ray" and settings.ray.address not in (None, "local"):
        from search.backends.ray_cluster import check_ray_address

        check_ray_address(settings.ray.address)


def _open_existing_study(target: StorageTarget):
    """A study that must exist (never creates a file, a folder or a study)."""
    from search.errors import UserError
    from search.storage import check_own_study, find_study, open_storage

    check_study_name(target.study_name, "--study")
    if not target.explicit:  # the default storage lies in --results-dir: checked as a search checks it
        check_text("results_dir", target.results_dir, optional=False)
    storage = open_storage(target.url, create=False)
    study = find_study(storage, target.study_name)
    if study is None:
        import optuna

        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        raise UserError(
            f"no study '{target.study_name}' in {mask_url(target.url)}; studies there: {', '.join(names) or 'none'}"
        )
    check_own_study(study, target.url, "--study")
    return study


def write_outputs(study, study_dir: Path, out=sys.stderr) -> None:
    """Report and export of a study, both from the storage."""
    from search.reporting.export import export_pareto
    from search.reporting.report import write_report

    files = write_report(study, study_dir)
    configs = export_pareto(study, study_dir / "pareto")
    print(f"report: {files.html}  (trials.csv, pareto.csv beside it)", file=out)
    if files.png_notice:
        print(files.png_notice, file=out)
    print(f"exported {len(configs)} Pareto-optimal configs to {study_dir / 'pareto'}", file=out)


def search(settings: Settings, write_report: bool = True) -> None:
    check_search(settings)
    run_search(settings, write_report)


def say_summary(study, study_dir: Path, out=sys.stderr) -> None:
    """The end of a search: its noise, its front's confirmation and the baselines' verdicts,
    printed and recorded in ``run.json``."""
    from search.backends.study import update_run_json
    from search.reporting.summary import study_summary

    summary = study_summary(study)
    for line in summary.lines:
        print(line, file=out)
    update_run_json(study_dir, summary.to_json())


def run_search(settings: Settings, write_report: bool = True) -> None:
    """The search itself, once :func:`check_search` has passed."""
    from search.backends.workers import packed_workers

    if settings.strategy == "one-shot":
        from search.backends.one_shot import one_shot_study_name, run_one_shot_search

        study = run_one_shot_search(settings)
        target = settings.storage_target
        say_summary(_open_existing_study(target), target.study_dir)
        if write_report:  # the one-shot study (both fronts), then the retrained trials' own study
            write_outputs(study, Path(target.results_dir) / one_shot_study_name(settings))
            write_outputs(_open_existing_study(target), target.study_dir)
        return
    elif settings.backend == "ray":
        from search.backends.ray_driver import run_ray_search

        study = run_ray_search(settings)
    elif settings.local_workers.index is None and (workers := packed_workers(settings)) > 1:
        from search.backends.workers import run_workers

        study = run_workers(settings.replace(workers=workers))
    else:
        from search.backends.optuna_driver import run_optuna_search

        study = run_optuna_search(settings)
    say_summary(study, settings.storage_target.study_dir)
    if write_report:
        write_outputs(study, settings.storage_target.study_dir)


def report(name: str, storage_url: str | None, results_dir: str) -> None:
    from search.reporting.report import write_report

    check_output_dir(results_dir)
    study = _open_existing_study(StorageTarget.of(results_dir, storage_url, name))
    files = write_report(study, Path(results_dir) / name)
    print(f"report: {files.html}")
    if files.png_notice:
        print(files.png_notice, file=sys.stderr)


def export(name: str, storage_url: str | None, results_dir: str) -> None:
    from search.reporting.export import export_pareto

    check_output_dir(results_dir)
    study = _open_existing_study(StorageTarget.of(results_dir, storage_url, name))
    configs = export_pareto(study, Path(results_dir) / name / "pareto")
    print(f"exported {len(configs)} Pareto-optimal configs to {Path(results_dir) / name / 'pareto'}")
    for path in configs:
        print(f"  {path}")


def retrain(config: str, epochs: int | None, device: str | None, data_dir: str | None) -> None:
    from search.artifacts.retrain import retrain_config

    summary = retrain_config(config, epochs=epochs, device=device, data_dir=data_dir)
    print(
        f"test accuracy {summary['test_accuracy']:.4f} after {summary['epochs']} epochs on the full training set "
        f"({summary['mflops']:.2f} MFLOPs, {summary['params']} params); weights: {summary['weights']}"
    )


def deploy_config(config: str, weights: str | None, onnx: bool, hetconv_form: str, flgc_form: str, batch: int) -> None:
    from search.artifacts.deployment import export_deployed

    check_number("batch", batch)
    summary = export_deployed(
        config, weights=weights, onnx=onnx, hetconv_form=hetconv_form, flgc_form=flgc_form, batch=batch
    )
    state = "trained weights " + summary["weights"] if summary["weights"] else "untrained weights (run 'retrain' first)"
    print(f"deployed with {state}: {summary['torchscript']}")
    print(
        f"max |trained - deployed| on a random batch: {summary['max_abs_difference']:.2e}; "
        f"explicit channel gathers left: {summary['explicit_gathers']}"
    )
    if "onnx" in summary:
        print(f"ONNX: {summary['onnx']}")
