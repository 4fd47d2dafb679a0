"""What the report reads off each trial record, and the two CSV tables built from the records:
``trials.csv`` (every trial) and ``pareto.csv`` (the front)."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import pandas as pd

from models import Architecture, LayerSpec, get_model_family
from search.files import atomic_write
from search.objectives import OBJECTIVES
from search.reporting.configurations import Configuration, config_numbers
from search.reporting.front import pareto_configurations
from search.reporting.labels import baseline_label, layer_code, layer_value
from search.storage import TrialRecord

__all__ = [
    "baseline_label",
    "extra_objectives",
    "front_sorted",
    "last_val_accuracy",
    "layer_code",
    "layer_value",
    "mflops",
    "objective_value",
    "pareto_frame",
    "published_model",
    "slot_names",
    "trials_frame",
    "write_tables",
]


# ---------------------------------------------------------------------------------------------
# per-layer helpers
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _family_slot_names(model: str, width: float) -> tuple[str, ...]:
    try:
        return tuple(slot.name for slot in get_model_family(model).slots(width))
    except Exception:  # noqa: BLE001  (an unknown model must not break a report)
        return ()


def slot_names(arch: Architecture) -> list[str]:
    """Names of an architecture's searchable layers (``conv02`` ...), ``layerNN`` when unknown."""
    names = list(_family_slot_names(arch.model, arch.width))
    if len(names) != len(arch.layers):
        names = [f"layer{i + 1:02d}" for i in range(len(arch.layers))]
    return names


# Published models among the baselines: what they are and which FLOPs convention their paper's
# figure uses, so that a reader compares it with the right column.
_HETCONV_PAPER = (
    "the HetConv paper's VGG-16 with P = {part} (Singh et al., CVPR 2019; its FLOPs are "
    "conv multiply-accumulates: compare with MFLOPs (paper))"
)
_FLGC_PAPER = (
    "the FLGC paper's MobileNetV2, 8 groups on the 17 projection convs, expansion convs dense "
    "(Wang et al., CVPR 2019; its reference code's table gives 62.6 MFLOPs at width 1, the "
    "all-ops count: compare with MFLOPs (all ops))"
)


def published_model(arch: Architecture | None) -> str | None:
    """Which published model ``arch`` is, with its FLOPs convention, or None."""
    if arch is None or not arch.layers:
        return None
    specs = set(arch.layers)
    if arch.model == "vgg16" and len(specs) == 1 and arch.layers[0].type == "hetconv":
        return _HETCONV_PAPER.format(part=arch.layers[0].part)
    if arch.model == "mobilenetv2":
        names = _family_slot_names(arch.model, arch.width)
        dense = (LayerSpec.dense(), LayerSpec.flgc(1))
        if len(names) == len(arch.layers) and all(
            spec == LayerSpec.flgc(8) if name.endswith("_project") else spec in dense
            for name, spec in zip(names, arch.layers)
        ):
            return _FLGC_PAPER
    return None


# ---------------------------------------------------------------------------------------------
# values of a record
# ---------------------------------------------------------------------------------------------
def last_val_accuracy(record: TrialRecord) -> float | None:
    """Validation accuracy of the last epoch with one (also for early-stopped trials)."""
    for entry in reversed(record.curve):
        value = entry.get("val_accuracy") if isinstance(entry, dict) else None
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            return float(value)
    return None


def objective_value(record: TrialRecord, name: str) -> float | None:
    """An objective's value of a record: its recorded value, else the matching attribute."""
    if name in record.values:
        return float(record.values[name])
    if name == "mflops":
        return record.mflops
    if name == "params":
        return None if record.params is None else float(record.params)
    value = record.user_attrs.get(name)
    return float(value) if isinstance(value, (int, float)) else None


def mflops(record: TrialRecord) -> float | None:
    """MFLOPs (paper convention) of a record: its cost attribute, else its objective value."""
    if record.mflops is not None:
        return float(record.mflops)
    value = record.values.get("mflops")
    return None if value is None else float(value)


def extra_objectives(objectives: list[str]) -> list[str]:
    """The study's objectives that not every trial records (latency): they get their own columns
    only in a study that optimizes them."""
    return [o for o in objectives if not (o in OBJECTIVES and OBJECTIVES[o].always_recorded)]


def front_sorted(front: list[TrialRecord]) -> list[TrialRecord]:
    """The front, cheapest first (records without MFLOPs last)."""
    return sorted(front, key=lambda r: (mflops(r) if mflops(r) is not None else math.inf, r.number))


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
_BASE_COLUMNS = [
    "number",
    "config",
    "state",
    "status",
    "baseline",
    "repeat_of",
    "accuracy",
    "last_val_accuracy",
    "mflops",
    "mflops_all_ops",
    "params",
]
_TAIL_COLUMNS = [
    "epochs_run",
    "train_seconds",
    "device",
    "seed",
    "datetime_start",
    "datetime_complete",
    "fail_reason",
    "on_front",
    "architecture",
]
# pareto.csv: one row per configuration of the front; its accuracy (and any measured objective)
# is the mean over its runs.
_RUN_COLUMNS = ["runs", "accuracy_sd", "trials"]


def _frame(
    records: list[TrialRecord], objectives: list[str], configs: dict[int, int], front: set[int]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of ``records`` (by number) and the columns: ``configs`` maps a trial to its
    configuration's number, ``front`` holds the numbers of the front's configurations."""
    extra = extra_objectives(objectives)
    layer_columns: list[str] = []
    hp_columns: list[str] = []
    rows = []
    for r in sorted(records, key=lambda rec: rec.number):
        row: dict[str, Any] = {
            "number": r.number,
            "config": configs.get(r.number),
            "state": r.state,
            "status": r.status,
            "baseline": r.baseline,
            "repeat_of": r.repeat_of,
            "accuracy": _num(r.values.get("accuracy")),
            "last_val_accuracy": _num(last_val_accuracy(r)),
            "mflops": _num(mflops(r)),
            "mflops_all_ops": _num(r.mflops_all_ops),
            "params": _num(r.params if r.params is not None else r.values.get("params")),
        }
        for name in extra:
            row[name] = _num(objective_value(r, name))
        row.update(
            epochs_run=r.epochs_run,
            train_seconds=_num(r.train_seconds),
            device=r.device,
            seed=r.seed,
            datetime_start=r.datetime_start,
            datetime_complete=r.datetime_complete,
            fail_reason=r.fail_reason,
            on_front=r.feasible_complete and configs.get(r.number) in front,
            architecture=r.architecture.summary() if r.architecture is not None else None,
        )
        if r.architecture is not None:
            for name, spec in zip(slot_names(r.architecture), r.architecture.layers):
                if name not in layer_columns:
                    layer_columns.append(name)
                row[name] = spec.label
        for key, value in r.hyperparameters.items():
            column = f"hp_{key}"
            if column not in hp_columns:
                hp_columns.append(column)
            row[column] = value
        rows.append(row)
    columns = _BASE_COLUMNS + extra + _TAIL_COLUMNS
    return rows, columns + [c for c in layer_columns if c not in columns] + hp_columns


def _as_frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    frame["on_front"] = frame["on_front"].astype(bool)
    for column in ("config", "repeat_of"):
        frame[column] = frame[column].astype("Int64")
    return frame


def trials_frame(
    records: list[TrialRecord], objectives: list[str], front: list[Configuration] | None = None
) -> pd.DataFrame:
    """One row per trial (by trial number).

    Columns: number, config (the number of the configuration it ran: that configuration's
    first run; group by it to gather the runs of one configuration), state, status, baseline,
    repeat_of (a ``--confirm`` run: the configuration it repeats), accuracy (NaN when the trial
    has no values), last_val_accuracy (last epoch of the curve, also for early-stopped trials),
    mflops, mflops_all_ops, params, the other objectives' values, epochs_run, train_seconds,
    device, seed, datetime_start, datetime_complete, fail_reason, on_front (a run of a
    configuration on the front), architecture (compact labels, e.g. ``hetconv:4 hetconv:2
    ...``), one column per searchable layer named after it (``conv02`` ... with the layer's
    label) and ``hp_*`` columns for tuned hyperparameters. ``front``: the front's
    configurations when the caller has them already.
    """
    if front is None:
        front = pareto_configurations(records, objectives)
    return _as_frame(*_frame(records, objectives, config_numbers(records), {c.number for c in front}))


def pareto_frame(front: list[Configuration], objectives: list[str]) -> pd.DataFrame:
    """One row per configuration of the front, cheapest first: the columns of
    :func:`trials_frame` for its first run with every objective the mean over its runs, then
    ``runs`` (how many), ``accuracy_sd`` (the sd of its own runs; empty with one run) and
    ``trials`` (the numbers of its runs)."""
    records = [c.record for c in front]
    rows, columns = _frame(records, objectives, {c.number: c.number for c in front}, {c.number for c in front})
    by_number = {c.number: c for c in front}
    for row in rows:
        config = by_number[row["number"]]
        row.update(
            runs=config.runs_count,
            accuracy_sd=_num(config.accuracy_sd),
            trials=" ".join(str(r.number) for r in config.runs),
        )
    frame = _as_frame(rows, columns + _RUN_COLUMNS)
    return frame.sort_values(["mflops", "accuracy", "number"], ascending=[True, False, True])


def write_tables(
    records: list[TrialRecord], objectives: list[str], front: list[Configuration], out_dir: Path
) -> tuple[Path, Path]:
    """Write ``trials.csv`` (every trial) and ``pareto.csv`` (the ``front``'s configurations on
    their means, cheapest first) into ``out_dir``; return their paths."""
    frame = trials_frame(records, objectives, front)
    trials_csv = out_dir / "trials.csv"
    atomic_write(trials_csv, lambda tmp: frame.to_csv(tmp, index=False))
    pareto = pareto_frame(front, objectives)
    pareto_csv = out_dir / "pareto.csv"
    atomic_write(pareto_csv, lambda tmp: pareto.to_csv(tmp, index=False))
    return trials_csv, pareto_csv
