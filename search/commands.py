"""What each command of ``run_search.py`` does, behind the argument parsing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from spaces import get_space, space_names

from .cost import architecture_cost, cheapest_and_dearest

__all__ = ["deploy_config", "export", "flops_rows", "print_table", "report", "retrain", "search", "space_rows", "write_outputs"]


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
    """Every built-in space (and any space files given) with its size and MFLOPs range."""
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
            }
        )
    return rows


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


def _open_existing_study(name: str, storage_url: str | None, results_dir: str):
    from .errors import UserError
    from .settings import Settings
    from .storage import find_study, open_storage

    url = storage_url or Settings(results_dir=results_dir).storage_url
    study = find_study(open_storage(url), name)
    if study is None:
        import optuna

        names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(url), include_best_trial=False)]
        raise UserError(f"no study '{name}' in {url}; studies there: {', '.join(names) or 'none'}")
    return study


def write_outputs(study, study_dir: Path, out=sys.stderr) -> None:
    """Report and export of a study, both from the storage."""
    from .export import export_pareto
    from .report import write_report

    files = write_report(study, study_dir)
    configs = export_pareto(study, study_dir / "pareto")
    print(f"report: {files.html}  (trials.csv, pareto.csv beside it)", file=out)
    if files.png_notice:
        print(files.png_notice, file=out)
    print(f"exported {len(configs)} Pareto-optimal configs to {study_dir / 'pareto'}", file=out)


def search(settings, write_report: bool = True) -> None:
    from .errors import UserError
    from .train import resolve_device
    from .workers import packed_workers

    try:
        resolve_device(settings.training.device)
    except (ValueError, RuntimeError) as err:
        raise UserError(str(err)) from None
    if settings.strategy == "one-shot":
        from .one_shot import one_shot_study_name, run_one_shot_search

        study = run_one_shot_search(settings)
        if write_report:  # the one-shot study (both fronts), then the retrained trials' own study
            write_outputs(study, Path(settings.results_dir) / one_shot_study_name(settings))
            retrained = _open_existing_study(settings.study, settings.storage, settings.results_dir)
            write_outputs(retrained, settings.study_dir)
        return
    elif settings.backend == "ray":
        from .ray_driver import run_ray_search

        study = run_ray_search(settings)
    elif settings.worker_index is None and (workers := packed_workers(settings)) > 1:
        from .workers import run_workers

        study = run_workers(settings.replace(workers=workers))
    else:
        from .optuna_driver import run_optuna_search

        study = run_optuna_search(settings)
    if write_report:
        write_outputs(study, settings.study_dir)


def report(name: str, storage_url: str | None, results_dir: str) -> None:
    from .report import write_report

    study = _open_existing_study(name, storage_url, results_dir)
    files = write_report(study, Path(results_dir) / name)
    print(f"report: {files.html}")
    if files.png_notice:
        print(files.png_notice, file=sys.stderr)


def export(name: str, storage_url: str | None, results_dir: str) -> None:
    from .export import export_pareto

    study = _open_existing_study(name, storage_url, results_dir)
    configs = export_pareto(study, Path(results_dir) / name / "pareto")
    print(f"exported {len(configs)} Pareto-optimal configs to {Path(results_dir) / name / 'pareto'}")
    for path in configs:
        print(f"  {path}")


def retrain(config: str, epochs: int | None, device: str | None, data_dir: str | None) -> None:
    from .retrain import retrain_config

    summary = retrain_config(config, epochs=epochs, device=device, data_dir=data_dir)
    print(
        f"test accuracy {summary['test_accuracy']:.4f} after {summary['epochs']} epochs on the full training set "
        f"({summary['mflops']:.2f} MFLOPs, {summary['params']} params); weights: {summary['weights']}"
    )


def deploy_config(config: str, weights: str | None, onnx: bool, hetconv_form: str, flgc_form: str, batch: int) -> None:
    from .deployment import export_deployed
    from .errors import UserError

    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    summary = export_deployed(config, weights=weights, onnx=onnx, hetconv_form=hetconv_form, flgc_form=flgc_form, batch=batch)
    state = "trained weights " + summary["weights"] if summary["weights"] else "untrained weights (run 'retrain' first)"
    print(f"deployed with {state}: {summary['torchscript']}")
    print(f"max |trained - deployed| on a random batch: {summary['max_abs_difference']:.2e}; "
          f"explicit channel gathers left: {summary['explicit_gathers']}")  # fmt: skip
    if "onnx" in summary:
        print(f"ONNX: {summary['onnx']}")
    elif "onnx_error" in summary:
        print(f"ONNX export not available here: {summary['onnx_error']}", file=sys.stderr)
