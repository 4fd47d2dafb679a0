"""Tests for layers.assignment_batch: the FLGC layers of a model solved as one batch per step,
with the same result as each layer alone."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import layers.assignment_batch as assignment_batch
from layers import AssignmentBatch, FLGConv2d, forget_assignments, share_assignments
from layers.flgc import hard_assignment
from models import build_model
from spaces import get_space


@pytest.fixture
def solves(monkeypatch):
    """How many batches were solved (calls of the one batch solver)."""
    count = [0]
    solve = assignment_batch._solve

    def counting(*args, **kwargs):
        count[0] += 1
        return solve(*args, **kwargs)

    monkeypatch.setattr(assignment_batch, "_solve", counting)
    return count


def flgc_layers(model: nn.Module) -> list[FLGConv2d]:
    return [m for m in model.modules() if isinstance(m, FLGConv2d)]


def sgd_step(model: nn.Module, x: torch.Tensor) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    F.cross_entropy(model(x), torch.arange(len(x)) % 10).backward()
    optimizer.step()


def test_build_model_shares_one_batch_in_module_order():
    model = build_model(get_space("vgg_flgc", width=0.25).uniform(4))
    found = flgc_layers(model)
    batch = found[0].assignment_batch
    assert len(found) == 12 and all(layer.assignment_batch is batch for layer in found)
    assert batch.members == found


def test_one_solve_per_training_step_and_none_while_the_logits_hold(solves):
    torch.manual_seed(0)
    model = build_model(get_space("mbv2_flgc", width=0.25).uniform(4))
    x = torch.randn(2, 3, 32, 32)
    for step in range(3):
        before = solves[0]
        sgd_step(model, x)
        assert solves[0] - before == 1, f"step {step}"
    model.eval()
    with torch.no_grad():
        for passes in (1, 0, 0):  # after the step's update once, then from the caches
            before = solves[0]
            model(x)
            assert solves[0] - before == passes


@pytest.mark.parametrize("rounds_on_cpu", [False, True], ids=["host-loop", "device-rounds"])
def test_shared_batch_equals_every_layer_alone(rounds_on_cpu):
    """Assignments, outputs and gradients of a model whose layers share a batch equal those of
    the same model with every layer alone, over a few SGD steps (float64)."""
    torch.manual_seed(1)
    shared = build_model(get_space("vgg_flgc", width=0.125).uniform(4)).double()
    alone = copy.deepcopy(shared)
    for layer in flgc_layers(alone):
        AssignmentBatch().add(layer)
    if rounds_on_cpu:
        flgc_layers(shared)[0].assignment_batch.host_loop_on_cpu = False
        for layer in flgc_layers(alone):
            layer.assignment_batch.host_loop_on_cpu = False
    assert len({id(layer.assignment_batch) for layer in flgc_layers(alone)}) == 12
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    for _ in range(3):
        for model in (shared, alone):
            sgd_step(model, x)
        for a, b in zip(flgc_layers(shared), flgc_layers(alone)):
            for got, want in zip(a.assignment(), b.assignment()):
                assert torch.equal(got, want)
        for (name, a), b in zip(shared.named_parameters(), alone.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_kinds_solved_apart_equal_their_own_hard_assignment():
    """Balanced, free and one-group layers, in two dtypes, in one batch: each layer's result is
    its own ``hard_assignment``."""
    torch.manual_seed(2)
    net = nn.Sequential(
        FLGConv2d(8, 16, 4),
        FLGConv2d(16, 6, 3, balanced=False),
        FLGConv2d(6, 12, 1),
        FLGConv2d(12, 8, 2).double(),
        FLGConv2d(8, 8, 8),
    )
    batch = share_assignments(net)
    assert batch.members == list(net)
    for layer in net:
        hard = layer.assignment()
        want = hard_assignment(layer.in_logits, layer.out_logits, balanced=layer.balanced, dtype=layer.weight.dtype)
        for name, got, expected in zip(hard._fields, hard, want):
            assert torch.equal(got, expected), name
        assert hard.mask.dtype == layer.weight.dtype and hard.soft_in is not None


def test_a_copy_has_its_own_batch():
    model = build_model(get_space("vgg_flgc", width=0.125).uniform(2))
    twin = copy.deepcopy(model)
    batch, twin_batch = flgc_layers(model)[0].assignment_batch, flgc_layers(twin)[0].assignment_batch
    assert twin_batch is not batch
    assert twin_batch.members == flgc_layers(twin)
    assert all(layer.assignment_batch is twin_batch for layer in flgc_layers(twin))


def test_joining_a_batch_leaves_the_old_one():
    a, b = FLGConv2d(8, 8, 2), FLGConv2d(8, 8, 2)
    own = a.assignment_batch
    shared = share_assignments(nn.Sequential(a, b))
    assert own.members == [] and shared.members == [a, b]


def test_forget_recomputes_although_the_logits_look_unchanged(solves):
    """What a CUDA-graph replay needs: the parameters change behind their version counters."""
    model = build_model(get_space("vgg_flgc", width=0.125).uniform(2))
    layers = flgc_layers(model)
    first = layers[0].assignment()
    before = solves[0]
    assert layers[0].assignment() is first and solves[0] == before
    with torch.no_grad():  # a change that does not bump the version counter
        layers[0].in_logits.data[:, 0] += 10.0 * (torch.arange(layers[0].in_channels) % 2)
    assert layers[0].assignment() is first  # the cache cannot see it ...
    forget_assignments(model)
    again = layers[0].assignment()
    assert solves[0] == before + 1 and not torch.equal(again.in_groups, first.in_groups)  # ... until told


def test_an_assignment_first_asked_in_inference_mode_trains():
    """Cached tensors are never inference tensors: a model evaluated under
    ``torch.inference_mode`` (latency, deployment's timings) trains next, from the cache."""
    layer = FLGConv2d(8, 8, 4)
    with torch.inference_mode():
        first = layer.eval().assignment()
        layer(torch.randn(1, 8, 4, 4))
    assert layer.assignment() is first
    assert not any(t.is_inference() or t.requires_grad for t in first if t is not None)
    copy.deepcopy(layer)  # (a tensor that required grad would refuse)
    layer.train()(torch.randn(1, 8, 4, 4)).sum().backward()
    assert layer.in_logits.grad is not None
