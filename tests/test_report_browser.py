"""report.html of a real quick search, rendered in headless Chromium: no JavaScript error,
every figure drawn, the noise of the study, error bars of the configurations run several times
(``--confirm``) and the front members the noise does not resolve, and a screenshot kept in
tests/artifacts/report.png to look at.

Needs Debian's ``chromium`` (CI installs it). Without it the test is skipped locally and
fails under ``CI=true``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from cli_process import HANG_SECONDS

from search.backends.optuna_driver import run_optuna_search
from search.reporting.report import write_report
from search.settings import Settings, TrainingSettings

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=20000",
]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path is None:
        message = "no Chromium installed (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _describe_as_search(study, space) -> None:
    """The study attributes a `vgg_hetconv` digits search with `--confirm 2` writes, for a
    generated study the report reads as one."""
    for key, value in {
        "space": space.fingerprint(),
        "objectives": ["accuracy", "mflops"],
        "space_name": "vgg_hetconv",
        "model": "vgg16",
        "width": 0.25,
        "dataset": "digits",
        "confirm": 2,
        "reference_point": {"accuracy": 0.0, "mflops": 20.0, "params": 1e6},
    }.items():
        study.set_user_attr(key, value)


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("results")
    threads = torch.get_num_threads()
    settings = Settings(
        space="vgg_hetconv",
        budget=4,
        width=0.25,
        baselines=True,
        confirm=1,
        quiet=True,
        results_dir=str(results),
        training=TrainingSettings(dataset="digits", epochs=2, batch_size=64, lr=0.1, warmup_epochs=0.5, threads=1),
    )
    try:
        study = run_optuna_search(settings)
    finally:
        torch.set_num_threads(threads)
    return write_report(study, settings.study_dir, png=False).html


def _run_chromium(html: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *extra, html.as_uri()],
        capture_output=True,
        text=True,
        timeout=HANG_SECONDS,
    )


def test_report_renders_without_javascript_errors(report_html: Path, tmp_path: Path) -> None:
    page = report_html.read_text()
    figures = re.findall(r'<div id="(fig-[^"]+)"', page)
    assert len(figures) >= 4, figures  # accuracy vs MFLOPs, hypervolume, layers, curves
    proc = _run_chromium(report_html, tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    errors = [line for line in console if "Uncaught" in line or "Error" in line]
    assert not errors, "\n".join(errors)
    dom = proc.stdout
    # Plotly marks each div it has drawn with the class js-plotly-plot and adds an SVG.
    for figure in figures:
        match = re.search(rf'<div id="{figure}"[^>]*class="[^"]*js-plotly-plot', dom)
        assert match, f"figure {figure} was not rendered"
    assert dom.count('class="main-svg"') >= len(figures)
    assert "Pareto front" in dom and "uniform baselines" in dom
    # the study's noise, and error bars of the configurations --confirm ran again
    assert "seed-to-seed sd" in dom and "What the noise resolves" in dom
    assert "Per-layer choice against the uniform baselines" in dom
    assert "mean ± sd of their runs" in dom and 'class="yerror"' in dom


@pytest.fixture(scope="module")
def unresolved_html(tmp_path_factory) -> Path:
    """A study whose front has two members the noise does not resolve (three runs each, means
    0.5 points apart, sd 1 point) and a third one well above them."""
    import optuna
    from optuna.trial import TrialState

    from spaces import get_space

    folder = tmp_path_factory.mktemp("unresolved")
    storage = f"sqlite:///{folder / 'studies.db'}"
    study = optuna.create_study(storage=storage, study_name="noisy", directions=["maximize", "minimize"])
    space = get_space("vgg_hetconv", width=0.25)
    _describe_as_search(study, space)
    for value, mflops, accuracies in (
        ("16", 3.7, (0.80, 0.81, 0.82)),
        ("8", 4.8, (0.805, 0.815, 0.825)),
        ("2", 11.3, (0.95, 0.96, 0.97)),
    ):
        arch = space.uniform(value).to_json()
        for number, accuracy in enumerate(accuracies):
            attrs = {
                "status": "ok",
                "architecture": arch,
                "mflops": mflops,
                "mflops_all_ops": mflops,
                "params": 1000,
                "seed": number,
                "curve": [{"epoch": 1, "val_accuracy": accuracy}],
                "epochs_run": 1,
            }
            study.add_trial(
                optuna.trial.create_trial(state=TrialState.COMPLETE, values=[accuracy, mflops], user_attrs=attrs)
            )
    return write_report(study, folder / "noisy", png=False).html


def test_unresolved_front_members_are_named(unresolved_html: Path, tmp_path: Path) -> None:
    proc = _run_chromium(unresolved_html, tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert "seed-to-seed sd 1.00 points, from 3 configurations trained 3 times" in dom
    assert "Front members not resolved from each other" in dom
    assert "#0 and #3 (3.70-4.80 MFLOPs; means 81.00-81.50 %)" in dom
    assert 'class="yerror"' in dom and "✓" in dom  # error bars; confirmed rows of the per-layer view


def test_report_screenshot(report_html: Path, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    proc = _run_chromium(report_html, tmp_path, f"--screenshot={shot}", "--window-size=1300,2400")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 50_000  # a blank page is a few kB
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------- a study of 10000 trials


LARGE = 10_000


@pytest.fixture(scope="module")
def large_html(tmp_path_factory) -> Path:
    """A generated study of 10000 trials (in memory: the page is what is tested here, the
    storage's reading is tested in test_trial_index.py): distinct configurations on a noisy
    trend, a front of hundreds, a few configurations run three times, failed and
    early-stopped trials, and the uniform baselines."""
    import math
    import random

    import optuna
    from optuna.trial import TrialState

    from models import Architecture
    from search.evaluation.cost import slot_macs
    from spaces import get_space

    rng = random.Random(0)
    space = get_space("vgg_hetconv", width=0.25)
    study = optuna.create_study(study_name="large", directions=["maximize", "minimize"])
    _describe_as_search(study, space)
    trials = []
    baselines = {value: space.uniform(value) for value in ("1", "2", "4", "8", "16")}
    for number in range(LARGE):
        if number < len(baselines):
            value, arch = list(baselines.items())[number]
        else:
            value = None
            arch = Architecture(
                space.model, space.width, space.num_classes, tuple(rng.choice(o) for o in space.choices)
            )
        mflops = 0.5 + sum(slot_macs(slot, spec) for slot, spec in zip(space.slots, arch.layers)) / 1e6
        accuracy = min(0.999, 0.55 + 0.09 * math.log(mflops) + rng.gauss(0, 0.0005))
        state, status = TrialState.COMPLETE, "ok"
        if number % 97 == 0 and value is None:
            state, status = TrialState.FAIL, "failed"
        elif number % 89 == 0 and value is None:
            state, status = TrialState.PRUNED, "early_stopped"
        attrs = {
            "status": status,
            "architecture": arch.to_json(),
            "mflops": mflops,
            "mflops_all_ops": mflops * 1.02,
            "params": 1000 + number,
            "seed": number,
            "curve": [{"epoch": e, "val_accuracy": accuracy * e / 3} for e in (1, 2, 3)],
            "epochs_run": 3,
            **({"baseline": value} if value else {}),
            **({"fail_reason": "boom"} if status == "failed" else {}),
        }
        trials.append(
            optuna.trial.create_trial(
                state=state, values=[accuracy, mflops] if state == TrialState.COMPLETE else None, user_attrs=attrs
            )
        )
    for first in range(len(baselines), len(baselines) + 40):  # three runs of a few configurations
        for run in (1, 2):
            attrs = {**trials[first].user_attrs, "seed": LARGE + 2 * first + run, "repeat_of": first}
            values = [trials[first].values[0] + rng.gauss(0, 0.004), trials[first].values[1]]
            trials.append(optuna.trial.create_trial(state=TrialState.COMPLETE, values=values, user_attrs=attrs))
    study.add_trials(trials)
    return write_report(study, tmp_path_factory.mktemp("large"), png=False).html


@pytest.mark.slow
def test_the_report_of_ten_thousand_trials_draws_its_figures(large_html: Path, tmp_path: Path) -> None:
    page = large_html.read_text()
    assert page.count("trials.csv has every trial") == 1 and "over a density of all of them" in page
    assert "markers are drawn only at the trials that changed the hypervolume" in page
    assert "60 of them are shown, evenly spread along it" in page and "30 of them are shown" in page
    front = int(re.search(r"The front has (\d+) configurations", page).group(1))
    assert front >= 100, f"the generated front has {front} configurations; this test wants hundreds"
    assert large_html.stat().st_size < 20 * 2**20
    proc = _run_chromium(large_html, tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    errors = [line for line in console if "Uncaught" in line or "Error" in line]
    assert not errors, "\n".join(errors)
    dom = proc.stdout
    figures = re.findall(r'<div id="(fig-[^"]+)"', page)
    for figure in figures:
        assert re.search(rf'<div id="{figure}"[^>]*class="[^"]*js-plotly-plot', dom), (
            f"figure {figure} was not rendered"
        )
    assert dom.count('class="main-svg"') >= len(figures)
    assert "of 9," in dom and "drawn" in dom  # the sampled series say how many they draw
    assert "density of all" in dom
