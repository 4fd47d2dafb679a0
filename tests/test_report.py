"""Tests for search/reporting/report/ on real SQLite studies built without training.

Trials are added with ``optuna.trial.create_trial`` carrying the user attributes the tool
writes (``search.evaluation.evaluate.result_attributes`` plus status / baseline / fail_reason), with
real architectures of the ``vgg_hetconv`` space. The expected Pareto front is computed here
by brute force from the raw Optuna trials, not with the project's Pareto code.
"""

from __future__ import annotations

import csv
import json
import random
import re
import sys
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import plotly.graph_objects as go
import plotly.io
import pytest
from optuna.trial import TrialState

from models import Architecture
from search.reporting import report as report_module
from search.reporting.export import OFF_FRONT, export_pareto
from search.reporting.report import ReportFiles, trials_frame, write_report
from search.reporting.report import images as report_images
from search.storage import load_records
from spaces import get_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

WIDTH = 0.25
DENSE_MFLOPS = (
    19.924362  # search.evaluation.cost.architecture_cost(space.dense()) at width 0.25 (test_cost checks costs)
)
DENSE_PARAMS = 939898
SECTION_HEADINGS = (
    "1. Accuracy vs MFLOPs",
    "2. Hypervolume",
    "3. Per-layer choices of the Pareto configurations",
    "4. Validation accuracy per epoch of the Pareto configurations",
    "5. Pareto configurations",
)


@pytest.fixture(scope="module")
def space():
    return get_space("vgg_hetconv", width=WIDTH)


def fake_cost(arch: Architecture) -> tuple[float, float, int]:
    """A plausible, monotone cost (HetConv part P keeps ~1/P of the 3x3 kernels)."""
    shares = [1.0 if s.type == "dense" else 1.0 / s.part + (1.0 - 1.0 / s.part) / 9.0 for s in arch.layers]
    mflops = 0.6 + (DENSE_MFLOPS - 0.6) * sum(shares) / len(shares)
    return mflops, mflops + 0.24, int(DENSE_PARAMS * mflops / DENSE_MFLOPS)


def curve(final: float, epochs: int = 3) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "val_loss": 1.5 / e,
            "val_accuracy": final * e / epochs,
            "lr": 0.1,
            "seconds": 1.5,
        }
        for e in range(1, epochs + 1)
    ]


def attrs(arch: Architecture, accuracy: float | None, status: str = "ok", epochs: int = 3, **extra) -> dict:
    mflops, all_ops, params = fake_cost(arch)
    data = {
        "status": status,
        "architecture": arch.to_json(),
        "mflops": mflops,
        "mflops_all_ops": all_ops,
        "params": params,
        "curve": curve(accuracy, epochs) if accuracy is not None else [],
        "train_seconds": 4.5 if accuracy is not None else 0.0,
        "epochs_run": epochs if accuracy is not None else 0,
        "device": "cpu",
        "seed": 7,
        "fidelity": "full",
    }
    data.update(extra)
    return data


def new_study(tmp_path: Path, name: str = "unit", objectives=("accuracy", "mflops")) -> optuna.Study:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    directions = ["maximize" if o == "accuracy" else "minimize" for o in objectives]
    study = optuna.create_study(storage=storage, study_name=name, directions=directions)
    study.set_user_attr("space", get_space("vgg_hetconv", width=WIDTH).fingerprint())  # what marks this tool's
    study.set_user_attr("objectives", list(objectives))
    study.set_user_attr("space_name", "vgg_hetconv")
    study.set_user_attr("model", "vgg16")
    study.set_user_attr("width", WIDTH)
    study.set_user_attr("dataset", "digits")
    study.set_user_attr("reference_point", {"accuracy": 0.0, "mflops": DENSE_MFLOPS, "params": float(DENSE_PARAMS)})
    study.set_user_attr(
        "dense_cost", {"mflops": DENSE_MFLOPS, "mflops_all_ops": DENSE_MFLOPS + 0.24, "params": DENSE_PARAMS}
    )
    study.set_user_attr("protocol", {"dataset": "digits", "epochs": 3})
    study.set_user_attr("test_storage_url", storage)  # only for reload() below
    return study


def add(study, state, values, user_attrs, minute: int) -> None:
    trial = optuna.trial.create_trial(state=state, values=values, user_attrs=user_attrs)
    start = datetime(2025, 1, 1, 12, 0) + timedelta(minutes=minute)
    trial.datetime_start = start
    trial.datetime_complete = start + timedelta(minutes=1)
    study.add_trial(trial)


def random_arch(space, rng: random.Random) -> Architecture:
    return Architecture(space.model, space.width, space.num_classes, tuple(rng.choice(c) for c in space.choices))


def reload(study: optuna.Study) -> optuna.Study:
    """The study read back from its storage by a new connection (what a report run sees)."""
    return optuna.load_study(study_name=study.study_name, storage=study.user_attrs["test_storage_url"])


@pytest.fixture(scope="module")
def populated(tmp_path_factory, space):
    """Baselines, sampled ok trials, infeasible, failed, early-stopped and running trials
    (built once; the tests only read it)."""
    study = new_study(tmp_path_factory.mktemp("populated"))
    rng = random.Random(3)
    minute = 0
    numbers: dict[str, list[int]] = {"ok": [], "infeasible": [], "failed": [], "early_stopped": [], "running": []}

    def put(kind, state, values, user_attrs):
        nonlocal minute
        numbers[kind].append(len(study.trials))
        add(study, state, values, user_attrs, minute)
        minute += 2

    for value, acc in (("dense", 0.93), ("4", 0.90), ("16", 0.82)):
        arch = space.uniform(value)
        put("ok", TrialState.COMPLETE, [acc, fake_cost(arch)[0]], attrs(arch, acc, baseline=value))
    for i in range(14):
        arch = random_arch(space, rng)
        acc = round(rng.uniform(0.7, 0.92), 4)
        put(
            "ok",
            TrialState.COMPLETE,
            [acc, fake_cost(arch)[0]],
            attrs(arch, acc, hyperparameters={"lr": 0.05 + 0.01 * i}),
        )
    # infeasible candidates: accuracy 0 at (very) low cost, never trained; the cheapest cost of
    # all would make it non-dominated if it were (wrongly) a front candidate
    cheap = space.uniform(16)
    infeasible_attrs = attrs(cheap, None, status="infeasible")
    infeasible_attrs["mflops"] = 0.01
    put("infeasible", TrialState.COMPLETE, [0.0, 0.01], infeasible_attrs)
    arch = random_arch(space, rng)
    put("infeasible", TrialState.COMPLETE, [0.0, fake_cost(arch)[0]], attrs(arch, None, status="infeasible"))
    # failed: one after costing, one before anything was recorded
    arch = random_arch(space, rng)
    put("failed", TrialState.FAIL, None, attrs(arch, None, status="failed", fail_reason="loss became NaN at epoch 2"))
    put("failed", TrialState.FAIL, None, {"status": "failed", "fail_reason": "CUDA out of memory"})
    # early-stopped with a curve that would dominate everything
    arch = space.uniform(16)
    put("early_stopped", TrialState.PRUNED, None, attrs(arch, 0.99, status="early_stopped", epochs=2))
    # a running trial
    numbers["running"].append(len(study.trials))
    running = study.ask()
    running.set_user_attr("architecture", random_arch(space, rng).to_json())
    return study, numbers


def brute_force_front(study: optuna.Study) -> set[int]:
    candidates = [
        t for t in study.get_trials() if t.state == TrialState.COMPLETE and t.user_attrs.get("status", "ok") == "ok"
    ]
    front = set()
    for t in candidates:
        acc, mf = t.values
        dominated = any(
            (u.values[0] >= acc and u.values[1] <= mf) and (u.values[0] > acc or u.values[1] < mf) for u in candidates
        )
        if not dominated:
            front.add(t.number)
    return front


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def check_self_contained(text: str) -> None:
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.I), "a script is loaded from elsewhere"
    assert not re.search(r"<link\b", text, re.I), "a stylesheet or resource is linked"
    assert not re.search(r"<(img|iframe)[^>]*\bsrc\s*=\s*[\"']?https?:", text, re.I)
    assert "cdn.plot.ly" not in text.split("* plotly.js v")[0]
    assert text.count("* plotly.js v") == 1, "plotly.js must be embedded exactly once"
    assert text.count("Plotly.newPlot(") >= 1


def figure_json(text: str) -> str:
    """The data and layout of every figure of a report page, decoded from the page and written
    again as JSON with every character as it is: what the figures hold, whichever way plotly
    escaped it (``·`` or ``\\u00b7``)."""
    decoder, figures = json.JSONDecoder(), []
    for match in re.finditer(r"Plotly\.newPlot\(\s*", text):
        at, values = match.end(), []
        for _ in range(3):  # the div id, the data, the layout
            value, at = decoder.raw_decode(text, at)
            values.append(value)
            at = re.compile(r"\s*,\s*").match(text, at).end()
        figures.append(values[1:])
    return json.dumps(figures, ensure_ascii=False, separators=(",", ":"))


# ----------------------------------------------------------------------------------- tests


def test_report_files_and_trials_csv(populated, tmp_path):
    study, numbers = populated
    study = reload(study)
    files = write_report(study, tmp_path / "report", png=False)
    assert isinstance(files, ReportFiles)
    for path in (files.html, files.trials_csv, files.pareto_csv):
        assert path.is_file() and path.parent == tmp_path / "report"
    assert files.pngs == [] and not (tmp_path / "report" / "figures").exists()

    rows = read_csv(files.trials_csv)
    assert [int(r["number"]) for r in rows] == list(range(len(study.trials)))
    by_number = {int(r["number"]): r for r in rows}
    for kind, nums in numbers.items():
        for n in nums:
            assert by_number[n]["status"] == kind
    slot_names = [slot.name for slot in get_space("vgg_hetconv", width=WIDTH).slots]
    assert slot_names[0] == "conv02"
    for column in (
        "accuracy",
        "mflops",
        "mflops_all_ops",
        "params",
        "on_front",
        "architecture",
        "baseline",
        "epochs_run",
        "train_seconds",
        "device",
        "seed",
        "datetime_start",
        "datetime_complete",
        "fail_reason",
        "hp_lr",
        *slot_names,
    ):
        assert column in rows[0], column
    dense = by_number[0]
    assert dense["baseline"] == "dense" and dense["architecture"] == " ".join(["dense"] * 12)
    assert by_number[1]["conv02"] == "hetconv:4" and by_number[1]["conv13"] == "hetconv:4"
    failed_early = by_number[numbers["failed"][1]]
    assert failed_early["accuracy"] == "" and failed_early["fail_reason"] == "CUDA out of memory"
    assert by_number[numbers["running"][0]]["state"] == "RUNNING"


def test_pareto_csv_is_the_brute_force_front(populated, tmp_path):
    study, numbers = populated
    files = write_report(reload(study), tmp_path / "out", png=False)
    expected = brute_force_front(study)
    rows = read_csv(files.pareto_csv)
    got = [int(r["number"]) for r in rows]
    assert set(got) == expected and len(got) == len(expected)
    mflops = [float(r["mflops"]) for r in rows]
    assert mflops == sorted(mflops)
    assert all(r["on_front"] == "True" and r["status"] == "ok" for r in rows)
    for kind in ("infeasible", "failed", "early_stopped", "running"):
        assert not set(numbers[kind]) & set(got), kind
    # the early-stopped trial would dominate the whole front, the infeasible one is cheapest
    early = study.trials[numbers["early_stopped"][0]]
    assert early.user_attrs["curve"][-1]["val_accuracy"] > max(float(r["accuracy"]) for r in rows)
    assert early.user_attrs["mflops"] <= min(mflops)
    assert study.trials[numbers["infeasible"][0]].user_attrs["mflops"] < min(mflops)
    trials_on_front = {int(r["number"]) for r in read_csv(files.trials_csv) if r["on_front"] == "True"}
    assert trials_on_front == expected


def test_html_is_self_contained_with_every_section(populated, tmp_path):
    study, _ = populated
    files = write_report(reload(study), tmp_path / "out", png=False)
    text = files.html.read_text(encoding="utf-8")
    check_self_contained(text)
    for heading in SECTION_HEADINGS:
        assert heading in text, heading
    assert "Study unit" in text and "vgg_hetconv" in text and "digits" in text
    assert "normalized hypervolume" in text and "reference point" in text
    assert "Failed trials (2)" in text and "CUDA out of memory" in text
    figures = figure_json(text)
    front = sorted(brute_force_front(study), key=lambda n: study.trials[n].user_attrs["mflops"])
    for n in front:  # heatmap row labels and legend entries of the curves
        assert f"#{n} · " in figures and f'"name":"#{n}"' in figures
    # figures: one plot per section (1 scatter, hypervolume, heatmap, curves)
    assert text.count("Plotly.newPlot(") == 4
    assert '"shape":"hv"' in figures and "circle-open" in figures and '"symbol":"x"' in figures
    assert '"P4"' in figures and '"dense"' in figures
    # the uniform P baselines are the HetConv paper's models, with the FLOPs convention it uses
    assert "baselines (published models: see below)" in text
    assert "the HetConv paper&#x27;s VGG-16 with P = 4" in text or "the HetConv paper's VGG-16 with P = 4" in text
    assert "compare with MFLOPs (paper)" in text and "P = 16" in text


@pytest.fixture
def orjson_stand_in(monkeypatch):
    """An ``orjson`` for plotly to find where none is installed: it writes JSON as orjson does
    where it matters here (characters as they are, not ``\\uXXXX``), so that a test sees what a
    machine with orjson would write."""
    import types

    from _plotly_utils import optional_imports
    from _plotly_utils.utils import PlotlyJSONEncoder

    module = types.ModuleType("orjson")
    module.OPT_NON_STR_KEYS, module.OPT_SERIALIZE_NUMPY, module.OPT_INDENT_2 = 1, 2, 4
    module.dumps = lambda value, option=0: json.dumps(
        value, cls=PlotlyJSONEncoder, ensure_ascii=False, separators=(",", ":")
    ).encode()
    monkeypatch.setitem(sys.modules, "orjson", module)
    monkeypatch.setattr(optional_imports, "_not_importable", set())  # plotly remembers a failed import
    return module


def test_html_is_the_same_whichever_json_engine_plotly_finds(populated, tmp_path, monkeypatch, orjson_stand_in):
    """plotly writes a figure's JSON with orjson where that is installed, which writes other
    bytes than the standard library: the report pins the standard library's, so a fresh
    virtual environment and a machine with orjson write the same page."""
    study, _ = populated
    label = go.Figure(go.Scatter(name="#1 · 2"))
    assert "#1 · 2" in plotly.io.to_json(label) and "#1 \\u00b7 2" in plotly.io.to_json(label, engine="json")
    written = re.compile(r"report written</th><td>[^<]*")  # the one line that changes with the clock
    pages = {}
    for engine in ("json", "auto", "orjson"):  # auto: orjson, as it is installed now
        monkeypatch.setattr(plotly.io.json.config, "_default_engine", engine)
        page = write_report(reload(study), tmp_path / engine, png=False).html.read_text(encoding="utf-8")
        assert plotly.io.json.config.default_engine == engine  # the user's choice is left as it was
        pages[engine] = written.sub("", page)
    assert pages["json"] == pages["auto"] == pages["orjson"]
    assert "\\u00b7" in pages["json"]  # the standard library's escape, on every machine


def test_hypervolume_in_header_matches_brute_force(populated, tmp_path):
    study, _ = populated
    files = write_report(reload(study), tmp_path / "out", png=False)
    points = sorted((study.trials[n].values[1], study.trials[n].values[0]) for n in brute_force_front(study))
    # staircase area up to the reference point (accuracy 0, dense MFLOPs)
    hv = sum((nxt - mf) * acc for (mf, acc), nxt in zip(points, [p[0] for p in points[1:]] + [DENSE_MFLOPS]))
    text = files.html.read_text(encoding="utf-8")
    assert f"{hv:.6g} (over accuracy, mflops)" in text
    assert f"{hv / DENSE_MFLOPS:.4f}" in text


def test_trials_frame_columns(populated, tmp_path):
    study, numbers = populated
    records = load_records(study)
    frame = trials_frame(records, ["accuracy", "mflops"])
    assert len(frame) == len(study.trials)
    assert frame["on_front"].dtype == bool
    early = frame.loc[frame["number"] == numbers["early_stopped"][0]].iloc[0]
    assert early["status"] == "early_stopped" and early["accuracy"] != early["accuracy"]  # NaN
    assert early["last_val_accuracy"] == pytest.approx(0.99)
    assert list(frame.columns[frame.columns.str.startswith("conv")]) == [f"conv{i:02d}" for i in range(2, 14)]
    empty = trials_frame([], ["accuracy", "mflops"])
    assert len(empty) == 0 and "on_front" in empty.columns


def _edge_study(tmp_path, space, case: str) -> optuna.Study:
    study = new_study(tmp_path, name=case)
    if case == "only_failed":
        add(study, TrialState.FAIL, None, {"status": "failed", "fail_reason": "boom"}, 0)
        add(study, TrialState.FAIL, None, attrs(space.uniform(4), None, status="failed", fail_reason="NaN"), 2)
    elif case == "one_trial":
        arch = space.uniform(2)
        add(study, TrialState.COMPLETE, [0.8, fake_cost(arch)[0]], attrs(arch, 0.8), 0)
    elif case == "only_running":
        study.ask()
        study.ask().set_user_attr("architecture", space.uniform(8).to_json())
    elif case == "only_infeasible_and_pruned":
        arch = space.uniform(16)
        add(study, TrialState.COMPLETE, [0.0, 1.0], attrs(arch, None, status="infeasible"), 0)
        add(study, TrialState.PRUNED, None, attrs(arch, 0.5, status="early_stopped", epochs=1), 2)
    return study


@pytest.mark.parametrize("case", ["empty", "only_failed", "one_trial", "only_running", "only_infeasible_and_pruned"])
def test_edge_cases_write_a_report(tmp_path, space, case):
    study = _edge_study(tmp_path, space, case)
    files = write_report(reload(study), tmp_path / case, png=False)
    text = files.html.read_text(encoding="utf-8")
    check_self_contained(text)
    for heading in SECTION_HEADINGS:
        assert heading in text
    assert len(read_csv(files.trials_csv)) == len(study.trials)
    pareto = read_csv(files.pareto_csv)
    assert len(pareto) == (1 if case == "one_trial" else 0)
    if case != "one_trial":
        assert "No Pareto configuration yet" in text
    assert files.pngs == [] and files.png_notice is None


def test_flgc_paper_baseline_is_labelled_with_its_convention(tmp_path):
    """A named baseline of mbv2_flgc: labelled by name, described as the FLGC paper's model,
    its figure's convention (all ops) named; a non-published uniform baseline is not."""
    space = get_space("mbv2_flgc", width=WIDTH)
    assert report_module.published_model(space.uniform("flgc-paper")).startswith("the FLGC paper's MobileNetV2")
    assert report_module.published_model(space.uniform("8")) is None  # all 33 convs grouped: not the paper's
    study = new_study(tmp_path, name="mbv2")
    for minute, (value, acc) in enumerate((("flgc-paper", 0.8), ("8", 0.7))):
        arch, mflops = space.uniform(value), 5.0 - minute
        user_attrs = {
            "status": "ok",
            "architecture": arch.to_json(),
            "mflops": mflops,
            "mflops_all_ops": mflops + 1,
            "params": 1000,
            "curve": curve(acc),
            "epochs_run": 3,
            "baseline": value,
        }
        add(study, TrialState.COMPLETE, [acc, mflops], user_attrs, 2 * minute)
    text = write_report(reload(study), tmp_path / "out", png=False).html.read_text(encoding="utf-8")
    assert '"flgc-paper"' in text and '"G8"' in text
    assert "62.6 MFLOPs" in text and "compare with MFLOPs (all ops)" in text
    assert "HetConv paper" not in text


def test_extra_objectives_add_a_scatter(tmp_path, space):
    study = new_study(tmp_path, name="latency", objectives=("accuracy", "mflops", "latency_ms"))
    rng = random.Random(5)
    for i in range(6):
        arch = random_arch(space, rng)
        acc, latency = round(rng.uniform(0.7, 0.9), 3), round(rng.uniform(1, 5), 3)
        add(study, TrialState.COMPLETE, [acc, fake_cost(arch)[0], latency], attrs(arch, acc), 2 * i)
    files = write_report(reload(study), tmp_path / "out", png=False)
    text = files.html.read_text(encoding="utf-8")
    check_self_contained(text)
    assert "Accuracy vs latency_ms" in text and text.count("Plotly.newPlot(") == 5
    assert "(over accuracy, mflops)" in text  # no reference for latency: left out of the hypervolume
    rows = read_csv(files.trials_csv)
    assert "latency_ms" in rows[0] and all(r["latency_ms"] for r in rows)


def test_png_notice_without_chromium(populated, tmp_path, monkeypatch):
    study, _ = populated
    monkeypatch.setattr(report_images, "find_chromium", lambda: None)

    def never(*args, **kwargs):
        raise AssertionError("kaleido must not be tried without a browser")

    monkeypatch.setattr(report_images, "write_pngs", never)
    files = write_report(study, tmp_path / "out")
    assert files.pngs == []
    assert files.png_notice and "no Chromium" in files.png_notice and "\n" not in files.png_notice
    assert files.html.is_file()


def test_png_write_failure_becomes_a_notice(populated, tmp_path, monkeypatch):
    study, _ = populated
    monkeypatch.setattr(report_images, "find_chromium", lambda: "/nonexistent/chromium")
    import kaleido

    def broken(*args, **kwargs):
        raise RuntimeError("browser crashed\nwith details")

    monkeypatch.setattr(kaleido, "write_fig_from_object_sync", broken)
    files = write_report(study, tmp_path / "out")
    assert files.pngs == [] and files.html.is_file()
    assert "browser crashed" in files.png_notice and "\n" not in files.png_notice


@pytest.mark.skipif(report_images.find_chromium() is None, reason="no Chromium for kaleido")
def test_pngs_with_chromium(tmp_path, space):
    study = _edge_study(tmp_path, space, "one_trial")
    files = write_report(study, tmp_path / "out")
    assert files.png_notice is None
    names = sorted(p.name for p in files.pngs)
    assert names == ["accuracy_vs_mflops.png", "hypervolume.png", "pareto_curves.png", "pareto_layers.png"]
    for path in files.pngs:
        assert path.parent == tmp_path / "out" / "figures"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_config_that_leaves_the_front_keeps_its_retrained_model(tmp_path, space):
    """Export removes configs of trials no longer on the front, but one that was retrained
    (``trial_N.pt``, ``.retrain.json`` beside it) moves with its outputs to ``off_front/``:
    deleting it left a model whose config (what ``deploy`` reads) was gone."""
    study = new_study(tmp_path)
    rng = random.Random(3)
    first, second, third = random_arch(space, rng), random_arch(space, rng), random_arch(space, rng)
    add(study, TrialState.COMPLETE, [0.5, 10.0], attrs(first, 0.5), minute=0)
    add(study, TrialState.COMPLETE, [0.6, 12.0], attrs(second, 0.6), minute=1)
    out = tmp_path / "pareto"
    assert {p.name for p in export_pareto(study, out)} == {"trial_0.json", "trial_1.json"}
    for name in ("trial_0.pt", "trial_0.retrain.json", "trial_0.torchscript.pt"):  # trial 0 retrained, deployed
        (out / name).write_text(name)
    # trial 1 leaves the front without outputs; trial 0 leaves it with them
    add(study, TrialState.COMPLETE, [0.9, 5.0], attrs(third, 0.9), minute=2)  # another configuration
    assert [p.name for p in export_pareto(study, out)] == ["trial_2.json"]
    assert sorted(p.name for p in out.iterdir()) == [OFF_FRONT, "trial_2.json"]
    shelf = sorted(p.name for p in (out / OFF_FRONT).iterdir())
    assert shelf == ["trial_0.json", "trial_0.pt", "trial_0.retrain.json", "trial_0.torchscript.pt"]
    assert (out / OFF_FRONT / "trial_0.pt").read_text() == "trial_0.pt"
    assert '"trial": 0' in (out / OFF_FRONT / "trial_0.json").read_text()
