"""Tests for the one-shot supernet (layers/super_conv.py, models/supernet.py, search/strategies/supernet.py):
an activated supernet computes exactly what the stand-alone model with the inherited weights computes;
BN recalibration; sandwich training; save/load."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layers import FLGConv2d, HetConv2d, SuperConv2d, param_groups_without_logit_decay
from models import LayerSlot, LayerSpec, WeightSharingModel, build_model, searchable_layers
from search.evaluation.cost import slot_macs
from search.evaluation.data import load_dataset
from search.evaluation.train import TrialFailed
from search.settings import TrainingSettings
from search.strategies.supernet import (
    Supernet,
    load_supernet,
    recalibrate_bn,
    save_supernet,
    score,
    train_supernet,
)
from spaces import SpaceError, get_space

SPACES = ["vgg_hetconv", "vgg_flgc", "mbv2_flgc", "vgg_mixed"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_dataset("digits", tmp_path_factory.mktemp("data"))


@torch.no_grad()
def randomize(module: nn.Module, seed: int = 0) -> None:
    """Random weights everywhere: kernels, pointwise, FLGC logits, BN affine and statistics."""
    gen = torch.Generator().manual_seed(seed)

    def rand(t: torch.Tensor, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        return (torch.randn(t.shape, generator=gen, dtype=torch.float64) * scale + shift).to(t.dtype)

    for name, param in module.named_parameters():
        if "logits" in name:
            param.copy_(rand(param))
        elif param.ndim >= 2:
            param.copy_(rand(param, 1 / math.sqrt(param[0].numel())))
        else:
            param.copy_(rand(param, 0.1))
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.copy_(rand(m.weight, 0.2, 1.0))
            m.running_mean.copy_(rand(m.running_mean, 0.1))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen).to(m.running_var.dtype) + 0.5)


def architectures(net: Supernet, count: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [net.largest(), net.smallest()] + [net.sample(gen) for _ in range(count)]


def manual_standalone(net: Supernet, arch) -> nn.Module:
    """build_model(arch) whose searchable layers get ``standalone(spec)`` weights and whose other
    modules get the supernet's, copied module by module (independently of ``extract``)."""
    model = build_model(arch).to(dtype=net.layers[0].weight.dtype)
    found = searchable_layers(model)
    names = {id(m): n for n, m in model.named_modules()}
    searchable = tuple(names[id(getattr(p, a))] + "." for p, a in found)
    with torch.no_grad():
        for (parent, attr), layer, spec in zip(found, net.layers, arch.layers):
            getattr(parent, attr).load_state_dict(layer.standalone(spec).state_dict())
        for name, module in model.named_modules():
            own = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
            if not own or (name + ".").startswith(searchable):
                continue
            source = net.model.get_submodule(name)
            assert type(source) is type(module)
            for key, tensor in own.items():
                if tensor is not None:
                    tensor.copy_(getattr(source, key))
    return model


@pytest.mark.parametrize("space_name", SPACES)
def test_activated_supernet_equals_standalone_model(space_name):
    space = get_space(space_name, width=0.25)
    torch.manual_seed(0)
    net = Supernet(space)
    randomize(net, seed=1)
    net.eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    outputs = []
    for arch in architectures(net, 3, seed=3):
        net.activate(arch)
        with torch.no_grad():
            out = net(x)
            extracted = net.extract(arch).eval()(x)
            manual = manual_standalone(net, arch).eval()(x)
        assert torch.isfinite(out).all() and out.abs().max() > 1e-3
        torch.testing.assert_close(extracted, out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(manual, out, atol=1e-5, rtol=1e-5)
        outputs.append(out)
    assert not torch.allclose(outputs[0], outputs[1])  # the active architecture matters


def test_activated_supernet_equals_extract_float64():
    space = get_space("vgg_mixed", width=0.25)
    torch.manual_seed(0)
    net = Supernet(space).double()
    randomize(net, seed=4)
    net.eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for arch in architectures(net, 2, seed=5):
        net.activate(arch)
        model = net.extract(arch).eval()
        assert all(p.dtype == torch.float64 for p in model.parameters())
        with torch.no_grad():
            torch.testing.assert_close(model(x), net(x), atol=1e-10, rtol=1e-10)


SPECS = [
    LayerSpec.dense(),
    LayerSpec.hetconv(1),
    LayerSpec.hetconv(2),
    LayerSpec.hetconv(4),
    LayerSpec.flgc(1),
    LayerSpec.flgc(2),
    LayerSpec.flgc(4),
    LayerSpec.flgc(4, balanced=False),
]


def reference_layer(sc: SuperConv2d, spec: LayerSpec) -> nn.Module:
    """The project's own layer for ``spec``, weights copied from ``sc`` by hand."""
    s = sc.slot
    m, n, k = s.in_channels, s.out_channels, s.kernel_size
    with torch.no_grad():
        if spec.type == "dense":
            layer = nn.Conv2d(m, n, k, s.stride, k // 2, bias=False).double()
            layer.weight.copy_(sc.weight)
        elif spec.type == "hetconv":
            p = spec.part
            layer = HetConv2d(m, n, p, k, s.stride).double()
            grouped = torch.empty(n, m // p, k, k, dtype=torch.float64)
            for g in range(p):
                rows, cols = slice(g * n // p, (g + 1) * n // p), slice(g * m // p, (g + 1) * m // p)
                grouped[rows] = sc.weight[rows, cols]
            layer.load_parts(grouped, sc.pointwise[:, :, None, None] if p > 1 else None)
        else:
            layer = FLGConv2d(m, n, spec.groups, k, s.stride, balanced=spec.balanced).double()
            layer.weight.copy_(sc.weight)
            layer.in_logits.copy_(sc.in_logits[str(spec.groups)])
            layer.out_logits.copy_(sc.out_logits[str(spec.groups)])
    return layer


@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (1, 1)])
@pytest.mark.parametrize("training", [True, False])
def test_superconv_matches_layers_outputs_and_gradients(kernel, stride, training):
    slot = LayerSlot("t", 8, 16, kernel, stride, 8)
    torch.manual_seed(0)
    sc = SuperConv2d(slot, SPECS).double()
    randomize(sc, seed=6)
    sc.train(training)
    x0 = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    for spec in SPECS:
        sc.activate(spec)
        for ref in (reference_layer(sc, spec), sc.standalone(spec)):
            ref.train(training)
            sc.zero_grad(set_to_none=True)
            x_sc, x_ref = x0.clone().requires_grad_(), x0.clone().requires_grad_()
            y_sc, y_ref = sc(x_sc), ref(x_ref)
            torch.testing.assert_close(y_sc, y_ref, atol=1e-12, rtol=1e-12)
            upstream = torch.randn_like(y_sc)
            (y_sc * upstream).sum().backward()
            (y_ref * upstream).sum().backward()
            torch.testing.assert_close(x_sc.grad, x_ref.grad, atol=1e-12, rtol=1e-12)
            # the shared weights get what the stand-alone layer's weights get
            if isinstance(ref, HetConv2d):
                p, (n, m) = spec.part, sc.weight.shape[:2]
                block = torch.zeros_like(sc.weight, dtype=torch.bool)
                for g in range(p):
                    block[g * n // p : (g + 1) * n // p, g * m // p : (g + 1) * m // p] = True
                grad_grouped, grad_pointwise = ref.parts(ref.weight.grad)
                torch.testing.assert_close(sc.weight.grad[block].view(n, m // p, kernel, kernel), grad_grouped)
                assert not sc.weight.grad[~block].any()
                if p > 1:
                    torch.testing.assert_close(sc.pointwise.grad, grad_pointwise[:, :, 0, 0])
            else:
                torch.testing.assert_close(sc.weight.grad, ref.weight.grad)
            if isinstance(ref, FLGConv2d):
                g = str(spec.groups)
                for side in ("in_logits", "out_logits"):
                    expected = getattr(ref, side).grad
                    got = getattr(sc, side)[g].grad
                    if training and spec.balanced and spec.groups > 1:
                        assert expected.abs().sum() > 0
                    if expected is None:
                        assert got is None or not got.any()
                    else:
                        torch.testing.assert_close(got, expected)


def test_activate_rejects_choices_outside_the_space():
    net = Supernet(get_space("vgg_hetconv", width=0.25))
    other = get_space("vgg_flgc", width=0.25).uniform(2)
    with pytest.raises(SpaceError):
        net.activate(other)
    with pytest.raises(SpaceError):
        net.layers[0].activate(LayerSpec.flgc(2))


def test_superconv_reuses_flgc_assignment_and_its_cache():
    """Each FLGC choice's assignment is FLGConv2d's, cached while the shared logits hold (the
    candidates of one supernet step do not recompute it) and recomputed once they change."""
    slot = LayerSlot("t", 8, 16, 3, 1, 8)
    torch.manual_seed(0)
    sc = SuperConv2d(slot, SPECS).double()
    randomize(sc, seed=11)
    for spec in [s for s in SPECS if s.type == "flgc"]:
        hard = sc.assignment(spec)
        assert sc.assignment(spec) is hard
        own = sc.standalone(spec).assignment()
        for got, want in zip(hard, own):
            assert torch.equal(got, want)
    free, balanced = sc.assignment(LayerSpec.flgc(4, balanced=False)), sc.assignment(LayerSpec.flgc(4))
    assert torch.equal(free.in_groups, sc.in_logits["4"].argmax(1))  # same logits, own assignment
    assert torch.equal(torch.bincount(balanced.in_groups, minlength=4), torch.full((4,), 2))
    with torch.no_grad():
        sc.in_logits["4"].copy_(10.0 * F.one_hot(3 - balanced.in_groups, 4))
    assert torch.equal(sc.assignment(LayerSpec.flgc(4)).in_groups, 3 - balanced.in_groups)
    with pytest.raises(ValueError):
        sc.assignment(LayerSpec.hetconv(2))


def test_weight_sharing_model_without_a_space():
    """models.WeightSharingModel needs no space: the first choices are active, a sub-network
    outside its choices is refused with its own error, and it extracts like the Supernet."""
    space = get_space("vgg_mixed", width=0.25)
    torch.manual_seed(0)
    net = WeightSharingModel(space.dense(), space.slots, space.choices)
    assert net.active.layers == tuple(options[0] for options in space.choices)
    other_width = get_space("vgg_mixed", width=0.5).dense()
    not_a_choice = dataclasses.replace(space.dense(), layers=(LayerSpec.flgc(3),) * len(space.slots))
    for arch in [other_width, not_a_choice]:
        with pytest.raises(ValueError) as refused:
            net.activate(arch)
        assert not isinstance(refused.value, SpaceError)
    arch = net.sample(torch.Generator().manual_seed(0))
    net.activate(arch)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.extract(arch).eval()(x), net(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("space_name", SPACES)
def test_largest_smallest_and_sample(space_name):
    space = get_space(space_name, width=0.25)
    net = Supernet(space)
    big, small = net.largest(), net.smallest()
    gen = torch.Generator().manual_seed(0)
    samples = [net.sample(gen) for _ in range(20)]

    def macs(arch):
        return sum(slot_macs(slot, spec) for slot, spec in zip(space.slots, arch.layers))

    assert all(space.contains(a) for a in [big, small, *samples])
    assert all(macs(small) <= macs(a) <= macs(big) for a in samples)
    assert len({a.dumps() for a in samples}) > 1
    assert net.active == big  # the largest is active after construction
    if space_name == "vgg_hetconv":
        assert {s.label for s in big.layers} == {"hetconv:1"}


def test_logits_are_not_weight_decayed():
    net = Supernet(get_space("vgg_mixed", width=0.25))
    decay, no_decay = param_groups_without_logit_decay(net, 5e-4)
    logits = {id(p) for layer in net.layers for d in (layer.in_logits, layer.out_logits) for p in d.values()}
    assert logits and logits <= {id(p) for p in no_decay["params"]}
    assert not logits & {id(p) for p in decay["params"]}
    assert {id(layer.weight) for layer in net.layers} <= {id(p) for p in decay["params"]}
    every = [id(p) for p in decay["params"] + no_decay["params"]]
    assert sorted(every) == sorted(id(p) for p in net.parameters())


def test_recalibrate_bn_changes_only_bn_running_stats():
    space = get_space("vgg_mixed", width=0.25)
    torch.manual_seed(0)
    net = Supernet(space)
    randomize(net, seed=7)
    arch = architectures(net, 1, seed=8)[-1]
    net.activate(arch)
    net.eval()
    batches = [torch.randn(16, 3, 32, 32) for _ in range(3)]
    with torch.no_grad():
        net(batches[0])  # fills the FLGC assignment caches
    norms = {name for name, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    params = {k: v.clone() for k, v in net.named_parameters()}
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    momenta = {name: net.get_submodule(name).momentum for name in norms}
    net.train()
    recalibrate_bn(net, iter([(b, None) for b in batches[:2]] + [batches[2]]), num_batches=2)
    assert not net.training
    for k, v in net.named_parameters():
        assert torch.equal(v, params[k]), k
    for k, v in net.named_buffers():
        owner, _, attr = k.rpartition(".")
        if owner in norms and attr in ("running_mean", "running_var", "num_batches_tracked"):
            assert not torch.equal(v, buffers[k]), k
        else:
            assert torch.equal(v, buffers[k]), k
    assert all(net.get_submodule(n).momentum == momenta[n] for n in norms)
    # the statistics are the plain average over the batches (first BN: after the stem conv)
    stem, bn = net.model.features[0], net.model.features[1]
    with torch.no_grad():
        expected = torch.stack([stem(b).mean(dim=(0, 2, 3)) for b in batches[:2]]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected, atol=1e-6, rtol=1e-5)
    assert int(bn.num_batches_tracked) == 2


def test_train_supernet_and_score_on_digits(digits):
    space = get_space("vgg_hetconv", width=0.25)
    torch.manual_seed(0)
    net = Supernet(space)
    training = TrainingSettings(dataset="digits", epochs=2, batch_size=64, lr=0.1, warmup_epochs=0.5)
    history = train_supernet(net, digits, training, seed=0, device="cpu")
    print(
        "\nsupernet epochs:",
        [(r["epoch"], round(r["seconds"], 1), r["val_accuracy_largest"], r["val_accuracy_smallest"]) for r in history],
    )
    assert [r["epoch"] for r in history] == [1, 2]
    assert set(history[0]) >= {"epoch", "loss", "val_accuracy_largest", "val_accuracy_smallest", "seconds"}
    assert all(math.isfinite(r["loss"]) for r in history)
    assert history[-1]["val_accuracy_largest"] > 0.2
    gen = torch.Generator().manual_seed(1)
    for arch in [net.largest(), net.sample(gen), net.sample(gen)]:
        started = time.perf_counter()
        accuracy = score(net, arch, digits, device="cpu")
        print(f"score {accuracy:.3f} in {time.perf_counter() - started:.2f} s: {arch.summary()}")
        assert isinstance(accuracy, float) and 0.0 <= accuracy <= 1.0
    # same seed, same calibration batches: scoring is repeatable
    assert score(net, net.smallest(), digits, device="cpu") == score(net, net.smallest(), digits, device="cpu")


def test_a_sandwich_step_is_the_step_of_the_mean_loss(digits):
    """One step follows the gradient of the sandwich's mean loss (largest: cross-entropy,
    the others: KL to its predictions), so it is as large as a stand-alone step at the same
    lr; the sum of the losses took steps len(sandwich) times larger, and on digits32 the
    supernet never left chance."""
    import copy

    from search.evaluation.train import lr_at, prepare_training

    one_batch = dataclasses.replace(
        digits, train_images=digits.train_images[:64], train_labels=digits.train_labels[:64]
    )
    training = TrainingSettings(dataset="digits", epochs=1, batch_size=64, lr=0.1, warmup_epochs=0.0)
    torch.manual_seed(0)
    net = Supernet(get_space("vgg_hetconv", width=0.25))
    manual = copy.deepcopy(net)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    train_supernet(net, one_batch, training, seed=0, device="cpu", num_random=0)

    setup = prepare_training(manual, one_batch, training, 0, torch.device("cpu"))
    (images, labels), *rest = list(setup.loader)
    assert not rest
    for group in setup.optimizer.param_groups:
        group["lr"] = lr_at(0, 1, 0, training.lr)
    manual.train()
    manual.activate(manual.largest())
    logits = manual(images)
    teacher = logits.detach().softmax(dim=1)
    manual.activate(manual.smallest())
    distill = F.kl_div(manual(images).log_softmax(dim=1), teacher, reduction="batchmean")
    ((F.cross_entropy(logits, labels) + distill) / 2).backward()
    setup.optimizer.step()

    moved = 0
    expected = dict(manual.named_parameters())
    for name, param in net.named_parameters():
        torch.testing.assert_close(param, expected[name], rtol=1e-4, atol=1e-6, msg=name)
        moved += not torch.equal(param, before[name])
    assert moved > len(before) // 2  # the step moved the weights: the comparison is not vacuous


def _tiny(data):
    return dataclasses.replace(
        data,
        train_images=data.train_images[:128],
        train_labels=data.train_labels[:128],
        val_images=data.val_images[:64],
        val_labels=data.val_labels[:64],
    )


def test_train_supernet_nan_fails_and_on_epoch_stops(digits):
    space = get_space("mbv2_flgc", width=0.25)
    training = TrainingSettings(dataset="digits", epochs=3, batch_size=64, warmup_epochs=0)
    torch.manual_seed(0)
    net = Supernet(space)
    seen = []
    stop = lambda record: seen.append(record) or True  # noqa: E731
    history = train_supernet(net, _tiny(digits), training, 0, "cpu", num_random=1, on_epoch=stop)
    assert len(history) == 1 and seen == history
    with torch.no_grad():
        net.model.classifier.weight.fill_(float("nan"))
    with pytest.raises(TrialFailed):
        train_supernet(net, _tiny(digits), training, 0, "cpu")


def test_save_load_round_trip(tmp_path):
    space = get_space("vgg_mixed", width=0.25)
    torch.manual_seed(0)
    net = Supernet(space)
    randomize(net, seed=9)
    path = tmp_path / "supernet.pt"
    meta = {"training": TrainingSettings(dataset="digits").to_json(), "seed": 0, "epochs": 2}
    save_supernet(net, path, meta)
    loaded, loaded_meta = load_supernet(space, path)
    assert loaded_meta == meta
    net.eval(), loaded.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for arch in architectures(net, 2, seed=10):
            net.activate(arch), loaded.activate(arch)
            assert torch.equal(net(x), loaded(x))
    with pytest.raises(SpaceError):
        load_supernet(get_space("vgg_mixed", width=0.5), path)
