"""The training step replayed from a CUDA graph (search/evaluation/step.py).

Everywhere (no GPU needed): the rule that keeps or drops a graph, why a step cannot be
captured, that a runner without CUDA is the eager step exactly, and that the state saved
around warm-up and timing comes back exactly (SGD's first step included).

Marked ``gpu``: capture and replay equal the eager step, over steps, with a batch of another
shape and evaluation in between, and through ``train_model``.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from layers import FLGConv2d, capture_blocker
from models import build_model
from search.evaluation.data import BatchLoader, load_dataset
from search.evaluation.step import StepRunner, TrainingSetup, _TrainingState, keep_graph, training_step
from search.evaluation.train import evaluate_loader, prepare_training, train_model
from search.settings import TrainingSettings
from spaces import get_space

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU here)")


class RandomTrial:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def suggest_categorical(self, name, choices):
        return self.rng.choice(list(choices))


class LossScaling:
    """A float16 GradScaler, as far as the capture rule asks (none can be made without CUDA)."""

    def is_enabled(self) -> bool:
        return True


def setup_for(model: nn.Module, data, device: str = "cpu", **training) -> TrainingSetup:
    recipe = TrainingSettings(dataset="digits", batch_size=32, **training)
    return prepare_training(model, data, recipe, 0, torch.device(device))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_dataset("digits", tmp_path_factory.mktemp("digits"))


def test_keep_graph_rule():
    assert keep_graph("on", None, None)
    assert keep_graph("auto", 2.0, 1.0) and not keep_graph("auto", 1.0, 2.0) and not keep_graph("auto", 1.0, 1.0)
    assert not keep_graph("auto", None, 1.0) and not keep_graph("auto", 1.0, None)
    assert not keep_graph("off", 2.0, 1.0)


def test_capture_blockers(digits):
    model = build_model(get_space("vgg_flgc", width=0.125).uniform(4))
    setup = setup_for(model, digits)
    cuda = torch.device("cuda")
    from search.evaluation.step import capture_blocker as step_blocker

    assert step_blocker(model, setup, torch.device("cpu")) == "not on CUDA (cpu)"
    assert step_blocker(model, setup, cuda) is None  # what CUDA would capture
    assert "float16" in step_blocker(
        model, TrainingSetup(None, False, setup.loader, setup.optimizer, LossScaling()), cuda
    )
    for m in model.modules():
        if isinstance(m, FLGConv2d):
            m.reassign_every = 4
    assert "reassign_every=4" in capture_blocker(model) and "reassign_every" in step_blocker(model, setup, cuda)


@pytest.mark.parametrize("mode", ["auto", "on", "off"])
def test_without_cuda_the_runner_is_the_eager_step(mode, digits):
    torch.manual_seed(0)
    model = build_model(get_space("vgg_flgc", width=0.125).uniform(2))
    twin = copy.deepcopy(model)
    setup, twin_setup = setup_for(model, digits), setup_for(twin, digits)
    runner = StepRunner(model, setup, 0.1, mode)
    assert runner.note == ("eager: off" if mode == "off" else "eager: not on CUDA (cpu)") and not runner.replaying
    for step, (images, labels) in zip(range(3), setup.loader):
        runner.set_lr(0.05 * (step + 1))
        for group in twin_setup.optimizer.param_groups:
            group["lr"] = 0.05 * (step + 1)
        assert torch.equal(runner(images, labels), training_step(twin, images, labels, twin_setup, 0.1))
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    assert all(isinstance(group["lr"], float) for group in setup.optimizer.param_groups)
    with pytest.raises(ValueError):
        StepRunner(model, setup, 0.0, "always")


def test_saved_training_state_comes_back_exactly(digits):
    """What warm-up and timing rest on: after real steps, the restored state is the saved one,
    and a momentum buffer created meanwhile comes back as zeros, from which SGD's step is its
    first step exactly."""
    torch.manual_seed(1)
    model = build_model(get_space("vgg_hetconv", width=0.125).uniform(4))
    twin = copy.deepcopy(model)
    setup, twin_setup = setup_for(model, digits), setup_for(twin, digits)
    images, labels = next(iter(setup.loader))
    state = _TrainingState(model, setup.optimizer)
    for _ in range(2):
        training_step(model, images, labels, setup)
    assert not torch.equal(next(model.parameters()), next(twin.parameters()))
    state.restore()
    assert all(p.grad is None for p in model.parameters())
    for a, b in zip((*model.parameters(), *model.buffers()), (*twin.parameters(), *twin.buffers())):
        assert torch.equal(a, b)
    buffers = [s["momentum_buffer"] for s in setup.optimizer.state.values()]
    assert buffers and all((b == 0).all() for b in buffers)
    training_step(model, images, labels, setup)  # from zero momentum buffers ...
    training_step(twin, images, labels, twin_setup)  # ... and as the very first step
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- on a GPU


@pytest.fixture
def exact_cuda():
    """Deterministic cuDNN and no TF32, so that two runs of the same kernels agree bit for bit."""
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def run_steps(model, digits, mode: str, steps: int, short_batch_at: int | None = None):
    """``steps`` steps of the recipe on CUDA (a batch cut short at ``short_batch_at``, the
    evaluation's accuracy after each step); the runner and the per-step losses."""
    setup = setup_for(model, digits, "cuda")
    runner = StepRunner(model, setup, 0.0, mode, torch.device("cuda"))
    eval_loader = BatchLoader(
        digits.val_images,
        digits.val_labels,
        batch_size=100,
        device="cuda",
        train=False,
        mean=digits.mean,
        std=digits.std,
    )
    losses, accuracies = [], []
    for step, (images, labels) in zip(range(steps), setup.loader):
        if step == short_batch_at:
            images, labels = images[:-3], labels[:-3]
        runner.set_lr(0.05 / (step + 1))
        losses.append(runner(images, labels).clone())
        if step % 3 == 2:
            runner.sync()
            accuracies.append(evaluate_loader(model, eval_loader, setup.autocast_dtype)[1])
            model.train()
    return runner, torch.stack(losses).cpu(), accuracies


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", ["vgg_flgc", "mbv2_flgc", "vgg_hetconv", "vgg_mixed"])
def test_replayed_steps_equal_eager_steps(name, digits, exact_cuda):
    """The same candidate trained eagerly twice (the bound: 0 where the kernels are
    deterministic) and replayed from a graph, with a batch of another shape (eager) and
    evaluations (after replays) in between: losses, accuracies and parameters agree."""
    arch = get_space(name, width=0.25).sample(RandomTrial(3))
    runs = {}
    for label, mode in (("eager", "off"), ("again", "off"), ("graph", "on")):
        torch.manual_seed(0)
        model = build_model(arch)
        runner, losses, accuracies = run_steps(model, digits, mode, steps=9, short_batch_at=4)
        runs[label] = (losses, accuracies, [p.detach().double().cpu() for p in model.parameters()])
        if mode == "on":
            assert runner.replaying and runner.note == "graph", runner.note
    bound = max((a - b).abs().max().item() for a, b in zip(runs["eager"][2], runs["again"][2]))
    assert runs["graph"][1] == runs["eager"][1] or bound > 0
    for a, b in zip(runs["graph"][2], runs["eager"][2]):
        assert (a - b).abs().max().item() <= bound
    assert (runs["graph"][0] - runs["eager"][0]).abs().max().item() <= max(
        bound, (runs["again"][0] - runs["eager"][0]).abs().max().item()
    )


@pytest.mark.gpu
@needs_cuda
def test_auto_decides_and_blocked_steps_stay_eager(digits):
    torch.manual_seed(0)
    model = build_model(get_space("vgg_flgc", width=0.25).uniform(4))
    runner, losses, _ = run_steps(model, digits, "auto", steps=4)
    assert runner.note.startswith(("graph (step", "eager: faster")), runner.note
    assert torch.isfinite(losses).all()
    for m in model.modules():
        if isinstance(m, FLGConv2d):
            m.reassign_every = 2
    runner = StepRunner(model, setup_for(model, digits, "cuda"), 0.0, "on", torch.device("cuda"))
    assert runner.note.startswith("eager: FLGC reassign_every=2") and not runner.replaying


@pytest.mark.gpu
@needs_cuda
def test_train_model_with_and_without_graphs(digits, exact_cuda):
    histories = {}
    for mode in ("off", "on"):
        torch.manual_seed(0)
        model = build_model(get_space("vgg_mixed", width=0.25).sample(RandomTrial(5)))
        recipe = TrainingSettings(dataset="digits", epochs=2, batch_size=64, device="cuda", cuda_graphs=mode)
        histories[mode] = [
            (r.train_loss, r.val_loss, r.val_accuracy)
            for r in train_model(model, digits, recipe, 0, torch.device("cuda"))
        ]
    for off, on in zip(histories["off"], histories["on"]):
        assert off == pytest.approx(on, rel=1e-5, abs=1e-6)
