"""Loading an exported config (``retrain CONFIG``, ``deploy CONFIG``): every malformed config
found by the audit ends with exit code 2 and ONE ``error:`` line that names the problem,
before anything trains or is written (no ``.pt``, no ``data`` folder); and every config that
today's exporter (``config_of``) writes loads.

In-process (``run_search.main``), with training and model building replaced by a function
that fails the test: a regression shows as a failure here, not as a minute of training.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_bad_input_cli import run_in_process  # noqa: E402

HET2 = {"type": "hetconv", "part": 2}
ARCH = {"model": "vgg16", "width": 0.25, "num_classes": 10, "layers": [HET2] * 12}


def exported_like(**changes: object) -> dict:
    """A config as the exporter writes it (the fields ``retrain`` and ``deploy`` read), with
    ``changes`` applied (``"drop:NAME"`` as a key removes ``NAME``)."""
    from search.settings import TrainingSettings

    config: dict = {
        "format": "flgc-hetconv-nas/config/v1",
        "architecture": ARCH,
        "metrics": {"accuracy": 0.5, "mflops": 6.3},
        "training": TrainingSettings(dataset="digits", epochs=1).to_json(),
        "seed": 0,
    }
    for key, value in changes.items():
        if key.startswith("drop:"):
            del config[key[5:]]
        else:
            config[key] = value
    return config


class Trained(AssertionError):
    """Raised where training or a model build would start."""


@pytest.fixture
def no_work(monkeypatch):
    """Training (retrain) and model building (deploy) fail the test if they are reached."""
    from search.artifacts import deployment, retrain

    def refuse(*_a, **_k):
        raise Trained("the config was accepted: work started")

    monkeypatch.setattr(retrain, "evaluate", refuse)
    monkeypatch.setattr(deployment, "build_model", refuse)


def refused(command: str, text: str, folder: Path) -> str:
    """Run ``command`` on a config file holding ``text`` in ``folder``: its one error line,
    after checking that nothing was written beside it or in the working folder."""
    path = folder / "trial_0.json"
    path.write_text(text)
    proc = run_in_process([command, str(path)], folder)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    shown = f"exit {proc.returncode}\n--- stderr ---\n{proc.stderr}--- stdout ---\n{proc.stdout}"
    assert "Traceback" not in proc.stderr, shown
    assert proc.returncode == 2, shown
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    assert sorted(p.name for p in folder.iterdir()) == ["trial_0.json"], shown  # no .pt, no data/
    return lines[0]


def huge_width() -> str:
    return json.dumps(exported_like()).replace('"width": 0.25', '"width": 1' + "0" * 400)


def huge_seed(digits: int) -> str:
    return json.dumps(exported_like(seed=12345)).replace("12345", "1" * digits)


def misspelt_epochs() -> str:
    config = exported_like()
    config["training"]["epoch"] = config["training"].pop("epochs")
    return json.dumps(config)


CASES = {
    "metrics-null": (json.dumps(exported_like(metrics=None)), ["'metrics' must be a mapping", "NoneType"]),
    "metrics-list": (json.dumps(exported_like(metrics=[1, 2])), ["'metrics' must be a mapping", "list"]),
    "metrics-text": (json.dumps(exported_like(metrics="6.3")), ["'metrics' must be a mapping", "str"]),
    "width-huge": (huge_width(), ["architecture.width", "too large"]),
    "part-huge": (
        json.dumps(
            exported_like(architecture={**ARCH, "layers": [HET2] * 11 + [{"type": "hetconv", "part": 7}]})
        ).replace('"part": 7', '"part": 7' + "0" * 400),
        ["architecture.layers[11].part", "too large"],
    ),
    "epochs-huge": (
        json.dumps(exported_like()).replace('"epochs": 1', '"epochs": 1' + "0" * 400),
        ["training.epochs", "too large"],
    ),
    "seed-huge": (huge_seed(400), ["seed", "too large"]),
    "seed-over-the-digit-limit": (huge_seed(5000), ["not valid JSON", "number is too long", "4300 digits"]),
    "training-misspelt": (misspelt_epochs(), ["unknown training field 'epoch'", "known fields are", "epochs"]),
    "training-absent": (json.dumps(exported_like(**{"drop:training": None})), ["no 'training' recipe", "export"]),
}


@pytest.mark.parametrize("command", ["retrain", "deploy"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_is_one_error_line_before_any_work(case, command, tmp_path, no_work):
    text, hints = CASES[case]
    line = refused(command, text, tmp_path)
    for hint in hints:
        assert hint in line, line
    assert str(tmp_path / "trial_0.json") in line, line
    assert len(line) < 400, line  # no 400-digit number echoed back


def test_unknown_training_fields_are_all_named_and_capped(tmp_path, no_work):
    config = exported_like()
    config["training"].update({f"typo{i}": 1 for i in range(8)})
    line = refused("retrain", json.dumps(config), tmp_path)
    assert "unknown training fields 'typo0', 'typo1', 'typo2', 'typo3', 'typo4' and 3 more" in line, line


def test_from_json_still_ignores_unknown_keys_for_its_other_callers():
    from search.settings import TrainingSettings

    assert TrainingSettings.from_json({"epochs": 3, "removed_field": 1}).epochs == 3


def test_config_without_metrics_loads(tmp_path):
    from search.artifacts.retrain import load_config

    path = tmp_path / "c.json"
    path.write_text(json.dumps(exported_like(**{"drop:metrics": None})))
    assert "metrics" not in load_config(path)


def test_every_training_field_the_exporter_writes_is_accepted(tmp_path):
    """Round trip: ``config_of`` with every recipe field set away from its default and a
    tuned hyperparameter, then ``load_config`` and ``config_training`` give the same recipe."""
    import optuna

    from models import Architecture
    from search.artifacts.retrain import config_training, load_config
    from search.reporting.export import config_of
    from search.settings import TrainingSettings
    from search.storage import TrialRecord

    recipe = TrainingSettings(
        dataset="digits",
        data_dir="elsewhere",
        epochs=3,
        batch_size=32,
        lr=0.05,
        momentum=0.8,
        weight_decay=1e-4,
        label_smoothing=0.1,
        warmup_epochs=0.5,
        val_size=100,
        split_seed=2,
        device="cpu",
        amp=False,
        channels_last=False,
        cuda_graphs="off",
        threads=1,
    )
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("training", recipe.to_json())
    now = datetime.now(timezone.utc)
    record = TrialRecord(
        number=0,
        state="COMPLETE",
        status="ok",
        values={"accuracy": 0.5, "mflops": 6.3},
        architecture=Architecture.from_json(ARCH),
        mflops=6.3,
        mflops_all_ops=6.5,
        params=1000,
        curve=[],
        train_seconds=1.0,
        device="cpu",
        seed=4,
        baseline=None,
        hyperparameters={"lr": 0.02},
        fail_reason=None,
        datetime_start=now,
        datetime_complete=now,
        epochs_run=3,
    )
    config = config_of(study, record)
    path = tmp_path / "trial_0.json"
    path.write_text(json.dumps(config))
    loaded = load_config(path)
    assert config_training(loaded, path) == recipe.replace(lr=0.02)
    assert loaded["seed"] == 4
