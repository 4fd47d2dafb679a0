"""GPU checks (marked ``gpu``; skipped, with the reason, where CUDA is not available).

- layer and deploy-form exactness on CUDA against CPU float64;
- no host synchronisation inside a training step of any built-in space, checked with
  ``torch.cuda.set_sync_debug_mode("error")`` (which raises on every synchronising call);
- a 2-trial search on CUDA that writes a report, and two trials packed on one GPU.

Data: scikit-learn's digits (no network), as in the CPU end-to-end tests.
The packing-rule tests at the end run everywhere (they need no GPU).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest
import torch
from cli_process import cli_env, run_cli

from layers import FLGConv2d, HetConv2d
from models import build_model
from models.deploy import deploy
from search.backends.workers import DEFAULT_TRIALS_PER_GPU, packed_workers
from search.settings import Settings, SettingsError, TrainingSettings
from spaces import get_space, space_names

ROOT = Path(__file__).resolve().parent.parent
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU here)")
gpu = [pytest.mark.gpu, needs_cuda]


class RandomTrial:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def suggest_categorical(self, name, choices):
        return self.rng.choice(list(choices))


@pytest.fixture
def exact_cuda():
    """fp32 without TF32, so that CUDA results can be held to float32 tolerance."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _close(cuda_out: torch.Tensor, cpu_out: torch.Tensor, what: str) -> None:
    got, want = cuda_out.detach().double().cpu(), cpu_out.detach().double()
    error = ((got - want).norm() / want.norm().clamp_min(1e-30)).item()
    assert error < 1e-5, f"{what}: relative error {error:.2e}"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("kind", ["hetconv-split", "hetconv-dense", "hetconv-auto", "flgc", "flgc-free"])
def test_layer_forward_backward_on_cuda_matches_cpu_float64(kind, exact_cuda):
    torch.manual_seed(0)
    if kind.startswith("hetconv"):
        layer = HetConv2d(32, 64, part=4, training_form=kind.split("-")[1])
    else:
        layer = FLGConv2d(32, 64, 4, balanced=kind == "flgc")
    x = torch.randn(4, 32, 16, 16)
    reference = layer.double().train()
    x64 = x.double().requires_grad_()
    y64 = reference(x64)
    upstream = torch.randn_like(y64)
    (y64 * upstream).sum().backward()
    on_cuda = type(layer)(**_init_args(layer)).cuda().train()
    on_cuda.load_state_dict({k: v.float() for k, v in reference.state_dict().items()})
    xc = x.cuda().requires_grad_()
    yc = on_cuda(xc)
    (yc * upstream.float().cuda()).sum().backward()
    _close(yc, y64, f"{kind} output")
    _close(xc.grad, x64.grad, f"{kind} input gradient")
    for (name, p64), pc in zip(reference.named_parameters(), on_cuda.parameters()):
        _close(pc.grad, p64.grad, f"{kind} gradient of {name}")


def _init_args(layer) -> dict:
    if isinstance(layer, HetConv2d):
        return dict(
            in_channels=layer.in_channels,
            out_channels=layer.out_channels,
            part=layer.part,
            training_form=layer.training_form,
        )
    return dict(
        in_channels=layer.in_channels, out_channels=layer.out_channels, groups=layer.groups, balanced=layer.balanced
    )


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", space_names())
def test_deployed_forms_on_cuda_match_cpu_float64(name, exact_cuda):
    space = get_space(name, width=0.25)
    model = build_model(space.sample(RandomTrial(1))).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want = model.double()(x.double())
        model.float().cuda()
        for forms in (
            {"hetconv_form": "split", "flgc_form": "grouped"},
            {"hetconv_form": "dense", "flgc_form": "dense"},
            {"hetconv_form": "auto", "flgc_form": "auto"},
        ):
            deployed = deploy(model, **forms, example_input=x.cuda() if "auto" in forms.values() else None)
            _close(deployed(x.cuda()), want, f"{name} deployed {forms}")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", space_names())
def test_training_step_never_synchronises(name, tmp_path):
    """The real step (loader, autocast, model, fused SGD, scaler, NaN watch) under CUDA's
    sync-debug mode "error". The first step runs before: HetConv's ``auto`` form times
    itself once per shape, the one place a step may wait (documented)."""
    from search.evaluation.data import load_dataset
    from search.evaluation.train import NonFiniteWatch, prepare_training, training_step

    space = get_space(name, width=0.25)
    data = load_dataset("digits", tmp_path)
    device = torch.device("cuda")
    for seed in range(2):
        model = build_model(space.sample(RandomTrial(seed)))
        setup = prepare_training(model, data, TrainingSettings(dataset="digits", batch_size=64), seed, device)
        batches = iter(setup.loader)
        training_step(model, *next(batches), setup)  # warm-up: lazy init, auto-form timing
        watch = NonFiniteWatch(device, every=2)
        loss_sum = torch.zeros((), device=device)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for step in range(6):
                loss_sum += training_step(model, *next(batches), setup)
                assert watch.check(loss_sum, step) is None
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(loss_sum).item()


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    one_gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    proc = run_cli(args, cwd, env=cli_env(CUDA_VISIBLE_DEVICES=one_gpu, OMP_NUM_THREADS=None))
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    return proc


SEARCH = [
    "--space",
    "vgg_hetconv",
    "--dataset",
    "digits",
    "--budget",
    "2",
    "--confirm",
    "0",
    "--epochs",
    "2",
    "--width",
    "0.25",
    "--device",
    "cuda",
    "--early-stop",
    "none",
    "--quiet",
]


@pytest.mark.gpu
@needs_cuda
def test_two_trial_search_on_cuda_writes_a_report(tmp_path):
    _cli([*SEARCH, "--trials-per-gpu", "1", "--results-dir", str(tmp_path)], tmp_path)
    reports = list(tmp_path.rglob("report.html"))
    assert reports, f"no report under {tmp_path}"
    trials = (reports[0].parent / "trials.csv").read_text().splitlines()
    assert len(trials) == 3, trials  # header + 2 trials


@pytest.mark.gpu
@needs_cuda
def test_two_workers_share_one_gpu(tmp_path):
    """Two trials packed on GPU 0: two worker processes, each finished one trial."""
    import optuna

    _cli([*SEARCH, "--trials-per-gpu", "2", "--results-dir", str(tmp_path)], tmp_path)
    run = json.loads(next(tmp_path.rglob("run.json")).read_text())
    assert run.get("workers") == 2, run
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2


# ---------------------------------------------------------------- packing rule (no GPU needed)


def _settings(**changes) -> Settings:
    training = TrainingSettings(dataset="digits", device=changes.pop("device", "auto"))
    return Settings(training=training, budget=changes.pop("budget", 50), **changes)


def test_packing_rule():
    assert packed_workers(_settings(), gpus=0) == 1  # CPU: unchanged
    assert packed_workers(_settings(), gpus=1) == DEFAULT_TRIALS_PER_GPU > 1
    assert packed_workers(_settings(), gpus=2) == 2 * DEFAULT_TRIALS_PER_GPU
    assert packed_workers(_settings(trials_per_gpu=2, device="cuda"), gpus=3) == 6
    assert packed_workers(_settings(budget=3), gpus=2) == 3  # never more workers than trials
    assert packed_workers(_settings(workers=3), gpus=2) == 3  # --workers wins
    assert packed_workers(_settings(workers=4, budget=2), gpus=0) == 2  # ... up to the budget
    assert packed_workers(_settings(backend="ray"), gpus=1) == 1  # Ray packs with --gpus-per-trial
    assert packed_workers(_settings(strategy="one-shot"), gpus=1) == 1
    assert packed_workers(_settings(device="cpu"), gpus=1) == 1
    with pytest.raises(SettingsError):
        packed_workers(_settings(trials_per_gpu=2, device="cuda:1"), gpus=2)
    with pytest.raises(SettingsError):
        _settings(trials_per_gpu=0)
