"""Tests for search/evaluation/cost.py: ptflops hooks vs closed forms, dense models vs MACs by hand.

Expected counts are computed here from docs/layers.md, docs/models.md and docs/flops.md (layer shapes written out
below), never from the model code.
"""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch
from torch import nn

from layers import FLGConv2d, HetConv2d
from models import Architecture, LayerSpec, build_model, get_model_family
from models.mobilenetv2 import InvertedResidual
from search.evaluation.cost import architecture_cost, count_cost, count_params, slot_macs
from spaces import get_space

VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
MBV2_SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def macs(cost) -> int:
    return round(cost.mflops * 1e6)


# ----------------------------------------------------------------------------- hand counts


def vgg_layers(classes: int = 10):
    """(kind, D_out, C_out, C_in, K, searchable) of VGG-16 for CIFAR at width 1, from docs/models.md."""
    layers, cin, d, index = [], 3, 32, 0
    for item in VGG_CFG:
        if item == "M":
            d //= 2
            continue
        layers.append(("conv", d, item, cin, 3, index > 0))
        cin, index = item, index + 1
    layers.append(("linear", 1, 512, 512, 1, False))
    layers.append(("linear", 1, classes, 512, 1, False))
    return layers


def mbv2_layers(classes: int = 10):
    """Same for MobileNetV2 for CIFAR; depthwise as kind 'dw' (C_in = 1 per filter)."""
    layers = [("conv", 32, 32, 3, 3, False)]
    cin, d = 32, 32
    for t, c, n, s in MBV2_SETTINGS:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            dout = d // stride
            if t != 1:
                layers.append(("conv", d, hidden, cin, 1, True))
            layers.append(("dw", dout, hidden, 1, 3, False))
            layers.append(("conv", dout, c, hidden, 1, True))
            if stride == 1 and cin != c:
                layers.append(("conv", d, c, cin, 1, False))
            cin, d = c, dout
    layers.append(("conv", d, 1280, 320, 1, False))
    layers.append(("linear", 1, classes, 1280, 1, False))
    return layers


def layer_macs(layer) -> int:
    kind, d, cout, cin, k, _ = layer
    if kind == "linear":
        return cin * cout + cout  # ptflops counts the bias add of a linear layer
    return d * d * cout * cin * k * k


def hand_total(layers) -> int:
    return sum(layer_macs(layer) for layer in layers)


def searchable(layers):
    return [layer for layer in layers if layer[5]]


def test_hand_tables_have_the_right_shape():
    assert len(searchable(vgg_layers())) == 12
    assert len([x for x in vgg_layers() if x[0] == "conv"]) == 13
    assert len(searchable(mbv2_layers())) == 33
    assert [(x[2], x[3]) for x in searchable(mbv2_layers())] == [
        (s.out_channels, s.in_channels) for s in get_model_family("mobilenetv2").slots(1.0)
    ]


def dense_arch(model: str, width: float = 1.0, classes: int = 10) -> Architecture:
    n = len(get_model_family(model).slots(width))
    return Architecture(model, width, classes, (LayerSpec.dense(),) * n)


@pytest.fixture(scope="module")
def vgg_dense_cost():
    return architecture_cost(dense_arch("vgg16"))


@pytest.fixture(scope="module")
def mbv2_dense_cost():
    return architecture_cost(dense_arch("mobilenetv2"))


# ----------------------------------------------------------------------------- single layers


def hetconv_closed_form(m, n, p, k, d_out) -> int:
    return d_out * d_out * n * (k * k * m // p + m - m // p)


HET_CASES = [
    # M, N, P, K, stride, input size
    (8, 8, 1, 3, 1, 8),
    (8, 8, 2, 3, 1, 8),
    (8, 16, 4, 3, 1, 7),
    (16, 8, 8, 3, 2, 8),
    (16, 16, 16, 3, 2, 9),
    (12, 24, 3, 1, 1, 5),
    (32, 64, 4, 1, 2, 6),
    (6, 6, 6, 3, 1, 4),
    (64, 64, 64, 3, 1, 4),
]


@pytest.mark.parametrize("m,n,p,k,stride,size", HET_CASES)
def test_hetconv_hook_matches_closed_form(m, n, p, k, stride, size):
    layer = HetConv2d(m, n, p, kernel_size=k, stride=stride)
    d_out = (size + 2 * (k // 2) - k) // stride + 1
    cost = count_cost(nn.Sequential(layer), (m, size, size))
    assert macs(cost) == hetconv_closed_form(m, n, p, k, d_out)
    # the hook is exactly the paper's ratio of a standard conv
    dense = d_out * d_out * n * m * k * k
    assert Fraction(macs(cost), dense) == Fraction(1, p) + (1 - Fraction(1, p)) / (k * k)


@pytest.mark.parametrize("m,n,p,k,stride,size", HET_CASES[:5])
def test_hetconv_hook_counts_bias(m, n, p, k, stride, size):
    layer = HetConv2d(m, n, p, kernel_size=k, stride=stride, bias=True)
    d_out = (size + 2 * (k // 2) - k) // stride + 1
    cost = count_cost(nn.Sequential(layer), (m, size, size))
    assert macs(cost) == hetconv_closed_form(m, n, p, k, d_out) + n * d_out * d_out
    # same convention as ptflops' own nn.Conv2d with a bias
    dense_bias = macs(count_cost(nn.Sequential(nn.Conv2d(m, n, k, stride, k // 2, bias=True)), (m, size, size)))
    dense_nobias = macs(count_cost(nn.Sequential(nn.Conv2d(m, n, k, stride, k // 2, bias=False)), (m, size, size)))
    assert dense_bias - dense_nobias == n * d_out * d_out


@pytest.mark.parametrize(
    "c,n,g,k,stride,size",
    [(8, 8, 1, 3, 1, 8), (8, 16, 2, 3, 1, 8), (16, 32, 4, 1, 1, 6), (32, 16, 8, 3, 2, 8), (16, 16, 16, 3, 1, 5)],
)
def test_balanced_flgc_hook(c, n, g, k, stride, size):
    torch.manual_seed(g)
    layer = FLGConv2d(c, n, g, kernel_size=k, stride=stride)
    d_out = (size + 2 * (k // 2) - k) // stride + 1
    cost = count_cost(nn.Sequential(layer), (c, size, size))
    assert macs(cost) == d_out * d_out * n * c * k * k // g
    assert count_params(layer) == n * c * k * k // g
    layer_b = FLGConv2d(c, n, g, kernel_size=k, stride=stride, bias=True)
    cost_b = count_cost(nn.Sequential(layer_b), (c, size, size))
    assert macs(cost_b) == d_out * d_out * n * c * k * k // g + n * d_out * d_out


@pytest.mark.parametrize("c,n,g,k,size", [(8, 8, 3, 3, 6), (16, 12, 5, 1, 4), (24, 24, 7, 3, 5)])
def test_free_flgc_hook_counts_true_connections(c, n, g, k, size):
    torch.manual_seed(0)
    layer = FLGConv2d(c, n, g, kernel_size=k, balanced=False)
    with torch.no_grad():  # make the argmax groups clearly unbalanced
        layer.in_logits.copy_(torch.randn(c, g) * 3)
        layer.out_logits.copy_(torch.randn(n, g) * 3)
    connections = int(layer.connection_mask().sum())
    in_groups, out_groups = layer.input_groups(), layer.output_groups()
    by_group = sum(int((in_groups == j).sum()) * int((out_groups == j).sum()) for j in range(g))
    assert connections == by_group
    cost = count_cost(nn.Sequential(layer), (c, size, size))
    assert macs(cost) == connections * k * k * size * size
    assert count_params(layer) == connections * k * k


def test_hetconv_params_exclude_masked_weights():
    assert count_params(HetConv2d(64, 64, 4)) == 64 * 64 * 9 // 4 + 64 * 64 * 3 // 4
    assert count_params(HetConv2d(64, 128, 1)) == 64 * 128 * 9
    assert count_params(HetConv2d(64, 64, 64)) == 64 * 9 + 64 * 63
    assert count_params(HetConv2d(16, 32, 2, bias=True)) == 32 * 8 * 9 + 32 * 16 // 2 + 32
    model = nn.Sequential(HetConv2d(64, 64, 4), nn.BatchNorm2d(64))
    assert count_cost(model, (64, 4, 4)).params == 64 * 64 * 9 // 4 + 64 * 64 * 3 // 4 + 2 * 64


def test_flgc_params_exclude_logits():
    layer = FLGConv2d(32, 64, 4, kernel_size=1)
    all_params = sum(p.numel() for p in layer.parameters())
    assert all_params == 32 * 64 + 32 * 4 + 64 * 4
    assert count_params(layer) == 32 * 64 // 4


# ----------------------------------------------------------------------------- whole models


def test_vgg_dense_matches_hand_count(vgg_dense_cost):
    assert macs(vgg_dense_cost) == hand_total(vgg_layers())
    assert vgg_dense_cost.mflops_all_ops >= vgg_dense_cost.mflops
    assert vgg_dense_cost.params == 14_987_722


def test_mbv2_dense_matches_hand_count(mbv2_dense_cost):
    assert macs(mbv2_dense_cost) == hand_total(mbv2_layers())
    assert mbv2_dense_cost.mflops_all_ops >= mbv2_dense_cost.mflops
    assert mbv2_dense_cost.params == 2_295_834


def test_hand_count_depends_on_classes():
    cost = architecture_cost(dense_arch("vgg16", 1.0, 100))
    assert macs(cost) == hand_total(vgg_layers(100))


@pytest.mark.parametrize("p", [2, 4, 16, 64])
def test_vgg_uniform_hetconv_follows_paper_ratio(p, vgg_dense_cost):
    arch = Architecture("vgg16", 1.0, 10, (LayerSpec.hetconv(p),) * 12)
    cost = architecture_cost(arch)
    ratio = Fraction(1, p) + (1 - Fraction(1, p)) / 9
    saved = sum(layer_macs(layer) * (1 - ratio) for layer in searchable(vgg_layers()))
    expected = hand_total(vgg_layers()) - saved
    assert expected.denominator == 1
    assert macs(cost) == expected
    assert cost.mflops < vgg_dense_cost.mflops


def test_vgg_uniform_hetconv_1_is_dense(vgg_dense_cost):
    cost = architecture_cost(Architecture("vgg16", 1.0, 10, (LayerSpec.hetconv(1),) * 12))
    assert cost == vgg_dense_cost


@pytest.mark.parametrize("g", [2, 8])
def test_mbv2_uniform_flgc_divides_pointwise(g, mbv2_dense_cost):
    space = get_space("mbv2_flgc")
    cost = architecture_cost(space.uniform(str(g)))
    pointwise = sum(layer_macs(layer) for layer in searchable(mbv2_layers()))
    assert pointwise % g == 0
    assert macs(cost) == hand_total(mbv2_layers()) - pointwise + pointwise // g
    assert cost.params < mbv2_dense_cost.params


@pytest.mark.parametrize("g", [2, 4])
def test_vgg_uniform_flgc_divides_searchable(g):
    cost = architecture_cost(Architecture("vgg16", 1.0, 10, (LayerSpec.flgc(g),) * 12))
    conv = sum(layer_macs(layer) for layer in searchable(vgg_layers()))
    assert macs(cost) == hand_total(vgg_layers()) - conv + conv // g


# ----------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("training", [True, False])
def test_count_cost_keeps_mode_and_is_silent(training, capsys):
    torch.manual_seed(0)
    model = build_model(dense_arch("vgg16", 0.25))
    model.train(training)
    cost = count_cost(model)
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert cost.mflops > 0 and cost.params > 0


def test_count_cost_silent_for_custom_layers(capsys):
    model = nn.Sequential(HetConv2d(8, 8, 2), nn.ReLU(), FLGConv2d(8, 8, 2), nn.BatchNorm2d(8)).train()
    count_cost(model, (8, 6, 6))
    assert model.training
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_count_cost_deterministic():
    model = build_model(Architecture("vgg16", 0.25, 10, (LayerSpec.flgc(4),) * 12))
    assert count_cost(model) == count_cost(model)


def test_cost_to_json():
    data = architecture_cost(dense_arch("vgg16", 0.25)).to_json()
    assert set(data) == {"mflops", "mflops_all_ops", "params"}


# ----------------------------------------------------------------------------- slot_macs


def _searchable_modules(model: nn.Module) -> list[nn.Module]:
    kinds = (nn.Conv2d, HetConv2d, FLGConv2d)

    def convs(module):
        out = []
        for child in module.children():
            out += [child] if isinstance(child, kinds) else convs(child)
        return out

    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    if not blocks:
        return convs(model.features)[1:]
    return [c for b in blocks for c in convs(b.conv) if not (isinstance(c, nn.Conv2d) and c.groups > 1)]


@pytest.mark.parametrize("space_name", ["vgg_mixed", "mbv2_flgc", "vgg_hetconv"])
def test_slot_macs_match_hooks_per_layer_and_in_total(space_name):
    space = get_space(space_name, width=1.0)
    rng = random.Random(7)
    arch = Architecture(space.model, 1.0, 10, tuple(rng.choice(opts) for opts in space.choices))
    torch.manual_seed(0)
    model = build_model(arch)
    modules = _searchable_modules(model)
    assert len(modules) == len(space.slots)
    for slot, spec, module in zip(space.slots, arch.layers, modules):
        counted = macs(count_cost(nn.Sequential(module), (slot.in_channels, slot.input_size, slot.input_size)))
        assert counted == slot_macs(slot, spec), (slot.name, spec.label)
    # total = fixed part (hand count minus searchable dense MACs) + sum of slot MACs
    hand = vgg_layers() if space.model == "vgg16" else mbv2_layers()
    fixed = hand_total(hand) - sum(layer_macs(layer) for layer in searchable(hand))
    total = fixed + sum(slot_macs(s, spec) for s, spec in zip(space.slots, arch.layers))
    assert macs(count_cost(model)) == total


def test_slot_macs_dense_equals_hand_shapes():
    for model, hand in [("vgg16", vgg_layers()), ("mobilenetv2", mbv2_layers())]:
        slots = get_model_family(model).slots(1.0)
        assert [slot_macs(s, LayerSpec.dense()) for s in slots] == [layer_macs(layer) for layer in searchable(hand)]


@pytest.mark.parametrize(
    ("space_name", "model"), [("vgg_hetconv", "vgg16"), ("vgg_flgc", "vgg16"), ("mbv2_flgc", "mobilenetv2")]
)
def test_a_candidate_costs_after_training_what_it_cost_before_unless_its_groups_are_free(space_name, model):
    """evaluate() counts a trained candidate again only when training can change its cost (free
    FLGC groups learn their connections): for every other candidate the count before training
    is the count after it, whatever the weights."""
    from search.evaluation.cost import learns_its_cost

    space = get_space(space_name, width=0.25)
    rng = random.Random(0)
    for _ in range(2):
        arch = space.from_params({s.name: rng.choice(o).label for s, o in zip(space.slots, space.choices)})
        assert arch.model == model and not learns_its_cost(arch)
        trained = build_model(arch)
        with torch.no_grad():
            for parameter in trained.parameters():
                parameter.add_(torch.randn_like(parameter))  # weights unlike the fresh model's
        assert count_cost(trained) == architecture_cost(arch)
    free = Architecture("vgg16", 0.25, 10, (LayerSpec.flgc(4, balanced=False),) * 12)
    assert learns_its_cost(free)
