"""Latency as an objective: the measurement, the per-layer table and its cache (in process),
and searches on ``digits`` with ``--objectives ...,latency`` through the real CLI, whose
report must plot accuracy against latency.

Latencies are real measurements on this CPU, so no test asserts a time: only that values
exist, are positive, are what the table says, and reach the study, the CSV and the report.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import optuna
import pytest
import torch
from _studies import load
from cli_process import run_cli
from optuna.trial import TrialState

from search.evaluation.latency import LatencyTable, device_key, measure_latency, model_latency_ms
from spaces import get_space

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
QUICK = ["--preset", "quick", "--epochs", "1", "--threads", "1", "--confirm", "0"]

optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture(scope="module")
def space():
    return get_space("vgg_hetconv", width=0.125)


@pytest.fixture(scope="module")
def table(space) -> LatencyTable:
    torch.set_num_threads(1)  # as the tests that use it run (module fixtures precede conftest's)
    return LatencyTable.build(space, CPU, batch=1, repeats=2)


def search_cli(args: list, cwd: Path) -> subprocess.CompletedProcess:
    proc = run_cli(args, cwd)
    assert proc.returncode == 0, f"{' '.join(map(str, args))}\nexit {proc.returncode}\n{proc.stderr[-4000:]}"
    return proc


# ------------------------------------------------------------------------ in process


def test_measure_latency_calls_warmup_then_repeats_and_returns_the_median():
    calls = []
    assert measure_latency(lambda: calls.append(1), CPU, warmup=3, repeats=5) >= 0
    assert len(calls) == 8


def test_model_latency_is_positive_for_every_space():
    for name in ("vgg_hetconv", "vgg_flgc", "mbv2_flgc", "vgg_mixed"):
        space = get_space(name, width=0.125)
        arch = space.uniform(space.uniform_values()[-1])
        assert model_latency_ms(arch, CPU, batch=1, warmup=1, repeats=2) > 0, name


def test_table_has_every_layer_and_choice(space, table):
    assert list(table.layers) == [slot.name for slot in space.slots]
    for slot, options in zip(space.slots, space.choices):
        assert set(table.layers[slot.name]) == {"dense", *(spec.label for spec in options)}
        assert all(ms > 0 and math.isfinite(ms) for ms in table.layers[slot.name].values())
    assert table.scale > 0 and math.isfinite(table.fixed_ms)
    assert table.key["device"] == device_key(CPU) and table.key["batch"] == 1


def test_prediction_is_fixed_part_plus_the_chosen_layers(space, table):
    arch = space.uniform(4)
    layers = sum(table.layers[s.name][spec.label] for s, spec in zip(space.slots, arch.layers))
    assert table.predict(arch, space.slots) == pytest.approx(table.fixed_ms + table.scale * layers)
    # Changing one layer changes the prediction by that layer's difference, times the scale.
    first = space.slots[0].name
    other = next(spec.label for spec in space.choices[0] if spec != arch.layers[0])
    changed = space.from_params({**space.to_params(arch), first: other})
    delta = table.scale * (table.layers[first][other] - table.layers[first][arch.layers[0].label])
    assert table.predict(changed, space.slots) - table.predict(arch, space.slots) == pytest.approx(delta)


def test_calibration_line():
    from search.evaluation.latency import _fit_line

    assert _fit_line([1.0, 2.0, 3.0], [3.0, 5.0, 7.0]) == pytest.approx((1.0, 2.0))
    assert _fit_line([2.0], [5.0]) == (3.0, 1.0)  # one point: unit scale through it
    assert _fit_line([1.0, 2.0], [5.0, 4.0]) == (4.0, 1.0)  # a falling line is refused
    # a negative intercept (noise) would predict negative latencies for cheap candidates:
    # refitted through the origin instead
    fixed, scale = _fit_line([1.0, 2.0, 3.0], [0.5, 3.0, 4.0])
    assert fixed == 0.0 and scale == pytest.approx((0.5 + 6.0 + 12.0) / 14.0)
    assert _fit_line([5.0], [2.0]) == (0.0, 1.0)


def test_table_is_cached_per_space_device_and_batch(space, tmp_path, monkeypatch):
    built = []
    real_build = LatencyTable.build.__func__

    def counting_build(cls, *args, **kwargs):
        built.append(args[2] if len(args) > 2 else kwargs.get("batch"))
        return real_build(cls, *args, **kwargs)

    monkeypatch.setattr(LatencyTable, "build", classmethod(counting_build))
    first = LatencyTable.cached(space, CPU, 1, tmp_path, repeats=1)
    again = LatencyTable.cached(space, CPU, 1, tmp_path, repeats=1)
    assert built == [1], "the second call must load the cached table, not measure again"
    assert again.layers == first.layers and again.fixed_ms == first.fixed_ms and again.key == first.key
    LatencyTable.cached(space, CPU, 2, tmp_path, repeats=1)  # another batch: another table
    other_space = get_space("vgg_flgc", width=0.125)
    LatencyTable.cached(other_space, CPU, 1, tmp_path, repeats=1)
    assert built == [1, 2, 1]
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 3 and not list(tmp_path.glob("*.tmp"))
    assert json.loads(files[0].read_text())["key"]["device"] == device_key(CPU)


# ------------------------------------------------------------------------ searches


def _complete(results: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    return [t for t in load(results, study).trials if t.state == TrialState.COMPLETE]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["table", "measured"])
def test_search_on_latency_records_it_and_reports_accuracy_against_latency(tmp_path, mode):
    results = tmp_path / "results"
    search_cli(
        [
            *QUICK,
            "--space",
            "vgg_hetconv",
            "--budget",
            "2",
            "--objectives",
            "accuracy,mflops,latency",
            "--latency",
            mode,
            "--results-dir",
            results,
        ],
        tmp_path,
    )
    study = "vgg_hetconv-digits"
    trials = _complete(results, study)
    assert len(trials) == 2
    for t in trials:  # values in objective order: accuracy, MFLOPs, latency
        assert len(t.values) == 3 and t.values[2] > 0 and t.values[2] == t.user_attrs["latency_ms"]

    tables = list((results / "latency_tables").glob("*.json"))
    if mode == "table":  # each trial's latency is exactly the table's prediction for its layers
        assert len(tables) == 1
        data = json.loads(tables[0].read_text())
        space = get_space("vgg_hetconv", width=0.25)
        for t in trials:
            arch = space.from_params(t.params)
            layers = sum(data["layers"][s.name][spec.label] for s, spec in zip(space.slots, arch.layers))
            expected = data["fixed_ms"] + data["scale"] * layers
            assert t.values[2] == pytest.approx(expected)
    else:
        assert tables == []

    html = (results / study / "report.html").read_text(encoding="utf-8")
    assert "Accuracy vs latency_ms" in html and 'id="fig-accuracy_vs_latency_ms"' in html
    with (results / study / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(r["latency_ms"]) > 0 for r in rows)


@pytest.mark.slow
def test_search_on_accuracy_and_latency_alone_with_early_stopping(tmp_path):
    """Latency without MFLOPs as the cost objective, with early stopping at rung 1 of 2
    epochs judging trials on (accuracy, latency): still a front, a report and exports."""
    results = tmp_path / "results"
    search_cli(
        [
            *QUICK,
            "--epochs",
            "2",
            "--space",
            "vgg_flgc",
            "--budget",
            "2",
            "--objectives",
            "accuracy,latency",
            "--latency",
            "table",
            "--early-stop",
            "mo-asha",
            "--results-dir",
            results,
        ],
        tmp_path,
    )
    finished = [
        t for t in load(results, "vgg_flgc-digits").trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    ]
    assert len(finished) == 2
    for t in finished:  # the rung saw the latency the trial recorded
        assert t.user_attrs["rung_1"][1] == t.user_attrs["latency_ms"] > 0
    trials = _complete(results, "vgg_flgc-digits")
    assert trials and all(len(t.values) == 2 and t.values[1] > 0 for t in trials)
    html = (results / "vgg_flgc-digits" / "report.html").read_text(encoding="utf-8")
    assert "Accuracy vs latency_ms" in html
    assert list((results / "vgg_flgc-digits" / "pareto").glob("trial_*.json"))


@pytest.mark.parametrize("damage", ["truncated", "layer-missing", "not-a-number"])
def test_a_damaged_cached_table_is_built_again(space, tmp_path, monkeypatch, damage):
    """A cached table that was cut short or edited is measured again, not trusted (it gave a
    JSONDecodeError traceback, or failed every trial with a KeyError)."""
    first = LatencyTable.cached(space, CPU, 1, tmp_path, repeats=1)
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    if damage == "truncated":
        path.write_text(path.read_text()[:100])
    else:
        slot = space.slots[3].name
        if damage == "layer-missing":
            del data["layers"][slot]
        else:
            data["layers"][slot][space.choices[3][0].label] = "fast"
        path.write_text(json.dumps(data))
    built = []
    real_build = LatencyTable.build.__func__
    monkeypatch.setattr(
        LatencyTable, "build", classmethod(lambda cls, *a, **k: built.append(1) or real_build(cls, *a, **k))
    )
    again = LatencyTable.cached(space, CPU, 1, tmp_path, repeats=1)
    assert built == [1], "the damaged table was used"
    assert set(again.layers) == set(first.layers)
    assert json.loads(path.read_text())["layers"].keys() == first.layers.keys(), "the cache was not repaired"
