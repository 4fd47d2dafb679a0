"""No host synchronisation inside a training step of any built-in space.

On PyTorch's ``meta`` device tensors have shapes but no data, so anything that needs a value
on the host (``.item()``, ``bool(tensor)``, ``.cpu()``, ``.numpy()``, a Python branch on a
tensor) raises. A forward, backward and optimizer step of random candidates of every space
that runs there therefore waits on the device nowhere; on a GPU that is what keeps the
launch queue full (``tests/test_gpu.py`` checks the same with CUDA's sync-debug mode).
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from layers import FLGConv2d, HetConv2d, balanced_assignment
from models import build_model
from spaces import get_space, space_names

META = torch.device("meta")


class RandomTrial:
    """Just enough of ``optuna.Trial`` for ``SearchSpace.sample``."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def suggest_categorical(self, name, choices):
        return self.rng.choice(list(choices))


def train_step_on_meta(model: torch.nn.Module, steps: int = 1, batch: int = 2) -> None:
    model.to(META).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    images = torch.empty(batch, 3, 32, 32, device=META)
    labels = torch.zeros(batch, dtype=torch.long, device=META)
    for _ in range(steps):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        model(images)


def test_meta_device_rejects_host_reads():
    """The premise: on meta, a value read on the host fails (as the old host assignment did)."""
    logits = torch.randn(8, 2, device=META)
    with pytest.raises(Exception):  # noqa: B017  (the meta device's error type is not part of torch's API)
        logits.sum().item()
    with pytest.raises(Exception):  # noqa: B017  (the meta device's error type is not part of torch's API)
        bool(logits.any())
    with pytest.raises(Exception):  # noqa: B017  (the meta device's error type is not part of torch's API)
        balanced_assignment(logits, torch.zeros(8, dtype=torch.long, device=META))


@pytest.mark.parametrize("name", space_names())
def test_training_step_of_every_space_never_reads_the_device(name):
    space = get_space(name, width=0.125)
    seen = set()
    for seed in range(2):
        arch = space.sample(RandomTrial(seed))
        model = build_model(arch)
        seen |= {type(m) for m in model.modules() if isinstance(m, (FLGConv2d, HetConv2d))}
        train_step_on_meta(model)
    assert seen, f"space {name} sampled no searchable layer"


@pytest.mark.parametrize("form", ["split", "dense"])
def test_hetconv_forms_and_free_flgc_on_meta(form):
    layers = torch.nn.Sequential(
        HetConv2d(3, 16, part=1),
        HetConv2d(16, 16, part=4, training_form=form),
        FLGConv2d(16, 16, 4, balanced=False),
        FLGConv2d(16, 16, 8, reassign_every=2),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 10),
    )
    train_step_on_meta(layers, steps=3)


def test_non_finite_watch_looks_every_few_steps_and_keeps_seeing_a_nan():
    from search.evaluation.train import NonFiniteWatch

    watch = NonFiniteWatch(torch.device("cpu"), every=4)
    running = torch.zeros(())
    seen = []
    for step in range(12):
        running += float("nan") if step == 5 else 1.0
        seen.append(watch.check(running, step))
    # steps 0 and 4 look at a finite sum; the NaN of step 5 is seen at the next look, step 8
    assert seen[:8] == [None] * 8 and seen[8] == 8
