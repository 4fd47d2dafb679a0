"""Tests for models/: VGG-16 and MobileNetV2 for CIFAR (docs/models.md), Architecture.

Structure is checked against the definitions written out here from docs/models.md, not against
the model code. Forward/backward passes use width 0.25; width 1.0 is only built and counted.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from torch import nn

from layers import FLGConv2d, HetConv2d
from models import (
    Architecture,
    ArchitectureError,
    LayerSpec,
    build_model,
    get_model_family,
    model_names,
    validate,
)
from models.mobilenetv2 import InvertedResidual
from search.evaluation.cost import architecture_cost
from spaces import get_space, space_names

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
CONV_TYPES = (nn.Conv2d, HetConv2d, FLGConv2d)


# ----------------------------------------------------------------------------- helpers


def dense_arch(model: str, width: float = 1.0, num_classes: int = 10) -> Architecture:
    n = len(get_model_family(model).slots(width))
    return Architecture(model, width, num_classes, (LayerSpec.dense(),) * n)


def random_arch(space, rng: random.Random) -> Architecture:
    return Architecture(space.model, space.width, space.num_classes, tuple(rng.choice(opts) for opts in space.choices))


def conv_modules(module: nn.Module) -> list[nn.Module]:
    """Conv-like modules in definition order, not descending into HetConv2d/FLGConv2d."""
    found = []
    for child in module.children():
        if isinstance(child, CONV_TYPES):
            found.append(child)
        else:
            found += conv_modules(child)
    return found


def searchable_modules(model: nn.Module) -> list[nn.Module]:
    """The searchable convs of a built VGG16 / MobileNetV2, in order (derived from structure)."""
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    if not blocks:  # VGG: every conv of the features except the first
        return conv_modules(model.features)[1:]
    out = []
    for block in blocks:
        for conv in conv_modules(block.conv):  # shortcut conv lives outside block.conv
            if not (isinstance(conv, nn.Conv2d) and conv.groups > 1):  # skip depthwise
                out.append(conv)
    return out


# ----------------------------------------------------------------------------- VGG-16


@pytest.fixture(scope="module")
def vgg1():
    torch.manual_seed(0)
    return build_model(dense_arch("vgg16", 1.0))


@pytest.fixture(scope="module")
def mbv2_1():
    torch.manual_seed(0)
    return build_model(dense_arch("mobilenetv2", 1.0))


def test_vgg16_features_match_design(vgg1):
    feats = list(vgg1.features)
    expected = []  # (kind, detail)
    cin = 3
    for item in VGG_CFG:
        if item == "M":
            expected.append(("pool", None))
        else:
            expected += [("conv", (cin, item)), ("bn", item), ("relu", None)]
            cin = item
    assert len(feats) == len(expected)
    for module, (kind, detail) in zip(feats, expected):
        if kind == "conv":
            assert type(module) is nn.Conv2d
            assert (module.in_channels, module.out_channels) == detail
            assert module.kernel_size == (3, 3) and module.padding == (1, 1) and module.stride == (1, 1)
            assert module.groups == 1 and module.bias is None
        elif kind == "bn":
            assert type(module) is nn.BatchNorm2d and module.num_features == detail
        elif kind == "relu":
            assert type(module) is nn.ReLU
        else:
            assert type(module) is nn.MaxPool2d
            assert module.kernel_size == 2 and module.stride == 2
    convs = conv_modules(vgg1.features)
    assert len(convs) == 13
    assert convs[0].in_channels == 3
    assert len(get_model_family("vgg16").slots(1.0)) == 12


def test_vgg16_classifier_and_params(vgg1):
    cls = list(vgg1.classifier)
    assert [type(m) for m in cls] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (cls[0].in_features, cls[0].out_features) == (512, 512)
    assert cls[1].num_features == 512
    assert (cls[3].in_features, cls[3].out_features) == (512, 10)
    assert sum(p.numel() for p in vgg1.parameters()) == 14_987_722
    assert architecture_cost(dense_arch("vgg16", 1.0)).params == 14_987_722


def test_vgg16_first_conv_stays_dense_whatever_the_specs():
    arch = Architecture("vgg16", 1.0, 10, (LayerSpec.hetconv(4),) * 12)
    model = build_model(arch)
    convs = conv_modules(model.features)
    assert type(convs[0]) is nn.Conv2d and convs[0].in_channels == 3
    assert all(isinstance(c, HetConv2d) and c.part == 4 for c in convs[1:])


@pytest.mark.parametrize("model_name,classes", [("vgg16", 10), ("vgg16", 100), ("mobilenetv2", 10), ("mobilenetv2", 7)])
def test_output_shape(model_name, classes):
    model = build_model(dense_arch(model_name, 0.25, classes)).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, classes)


# ----------------------------------------------------------------------------- MobileNetV2


def test_mbv2_structure_matches_design(mbv2_1):
    feats = list(mbv2_1.features)
    stem = feats[0]
    assert type(stem) is nn.Conv2d
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride) == (3, 32, (3, 3), (1, 1))
    assert type(feats[1]) is nn.BatchNorm2d and type(feats[2]) is nn.ReLU6
    blocks = [m for m in feats if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17
    last = [m for m in feats[-3:]]
    assert type(last[0]) is nn.Conv2d and (last[0].in_channels, last[0].out_channels) == (320, 1280)
    assert last[0].kernel_size == (1, 1)
    assert type(last[1]) is nn.BatchNorm2d and type(last[2]) is nn.ReLU6
    assert isinstance(mbv2_1.classifier, nn.Linear)
    assert (mbv2_1.classifier.in_features, mbv2_1.classifier.out_features) == (1280, 10)
    assert not any(type(m) is nn.ReLU for m in mbv2_1.modules())

    cin = 32
    b = 0
    for t, c, n, s in MBV2_SETTINGS:
        for i in range(n):
            stride = s if i == 0 else 1
            block = blocks[b]
            hidden = cin * t
            convs = conv_modules(block.conv)
            if t == 1:
                assert len(convs) == 2  # no expansion conv
                depthwise, project = convs
            else:
                assert len(convs) == 3
                expand, depthwise, project = convs
                assert (expand.in_channels, expand.out_channels, expand.kernel_size) == (cin, hidden, (1, 1))
                assert expand.groups == 1
            assert (depthwise.in_channels, depthwise.out_channels, depthwise.groups) == (hidden, hidden, hidden)
            assert depthwise.kernel_size == (3, 3) and depthwise.stride == (stride, stride)
            assert (project.in_channels, project.out_channels, project.kernel_size) == (hidden, c, (1, 1))
            # activations: ReLU6 after expansion and depthwise, none after projection
            kinds = [type(m) for m in block.conv]
            assert kinds.count(nn.ReLU6) == (1 if t == 1 else 2)
            assert kinds[-1] is nn.BatchNorm2d
            # shortcut structure
            shortcut_convs = conv_modules(block.shortcut)
            if stride == 1 and cin == c:
                assert block.residual and isinstance(block.shortcut, nn.Identity)
            elif stride == 1:
                assert block.residual
                assert len(shortcut_convs) == 1
                sc = shortcut_convs[0]
                assert (sc.in_channels, sc.out_channels, sc.kernel_size) == (cin, c, (1, 1))
                assert any(type(m) is nn.BatchNorm2d for m in block.shortcut.modules())
            else:
                assert not block.residual and not shortcut_convs
            cin = c
            b += 1


def test_mbv2_searchable_count_and_params(mbv2_1):
    assert len(get_model_family("mobilenetv2").slots(1.0)) == 33
    assert len(searchable_modules(mbv2_1)) == 33
    assert sum(p.numel() for p in mbv2_1.parameters()) == 2_295_834
    assert architecture_cost(dense_arch("mobilenetv2", 1.0)).params == 2_295_834


def _zero_conv_branch(block: InvertedResidual) -> None:
    with torch.no_grad():
        for conv in conv_modules(block.conv):
            conv.weight.zero_()


def test_mbv2_residual_functional():
    """With the conv branch zeroed (fresh BN in eval: BN(0) == 0) a block returns its shortcut."""
    torch.manual_seed(0)
    model = build_model(dense_arch("mobilenetv2", 0.25)).eval()
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    seen = set()
    with torch.no_grad():
        for block in blocks:
            _zero_conv_branch(block)
            cin = block.conv[0].in_channels
            x = torch.randn(2, cin, 8, 8)
            y = block(x)
            stride = conv_modules(block.conv)[-2].stride[0]  # depthwise
            cout = y.shape[1]
            if stride == 2:
                seen.add("none")
                assert y.shape[-1] == 4
                assert torch.count_nonzero(y) == 0
            elif cin == cout:
                seen.add("identity")
                torch.testing.assert_close(y, x)
            else:
                seen.add("conv")
                expected = block.shortcut(x)
                assert torch.count_nonzero(expected) > 0
                torch.testing.assert_close(y, expected)
    assert seen == {"none", "identity", "conv"}


# ----------------------------------------------------------------------------- Architecture


SPACE_NAMES = ["vgg_hetconv", "vgg_flgc", "mbv2_flgc", "vgg_mixed"]


def test_builtin_spaces_are_the_expected_ones():
    assert set(SPACE_NAMES) <= set(space_names())
    assert set(model_names()) >= {"vgg16", "mobilenetv2"}


@pytest.mark.parametrize("space_name", SPACE_NAMES)
@pytest.mark.parametrize("width", [1.0, 0.25])
def test_json_round_trip(space_name, width):
    space = get_space(space_name, width=width)
    rng = random.Random(f"{space_name}-{width}")
    for _ in range(20):
        arch = random_arch(space, rng)
        assert Architecture.loads(arch.dumps()) == arch
        assert Architecture.from_json(arch.to_json()) == arch
        assert Architecture.from_json(json.loads(json.dumps(arch.to_json()))) == arch
        assert Architecture.loads(arch.dumps()).dumps() == arch.dumps()


def test_json_round_trip_free_flgc_and_odd_width():
    arch = Architecture(
        "vgg16",
        0.5,
        100,
        (LayerSpec.flgc(3, balanced=False), LayerSpec.hetconv(8), LayerSpec.flgc(4)) + (LayerSpec.dense(),) * 9,
    )
    back = Architecture.loads(arch.dumps())
    assert back == arch
    assert back.layers[0].balanced is False and back.layers[2].balanced is True
    assert isinstance(back.width, float)


@pytest.mark.parametrize("space_name", SPACE_NAMES)
def test_same_json_builds_same_cost(space_name):
    space = get_space(space_name, width=1.0)
    arch = random_arch(space, random.Random(len(space_name)))
    text = arch.dumps()
    first = architecture_cost(Architecture.loads(text))
    second = architecture_cost(Architecture.loads(text))
    assert first == second


def test_same_json_builds_same_cost_free_flgc():
    specs = tuple(LayerSpec.flgc(5, balanced=False) for _ in range(12))
    text = Architecture("vgg16", 0.25, 10, specs).dumps()
    assert architecture_cost(Architecture.loads(text)) == architecture_cost(Architecture.loads(text))


def test_illegal_part_names_layer_and_legal_values():
    specs = [LayerSpec.dense()] * 12
    specs[0] = LayerSpec.hetconv(3)
    with pytest.raises(ArchitectureError) as err:
        build_model(Architecture("vgg16", 1.0, 10, tuple(specs)))
    msg = str(err.value)
    assert "conv02" in msg
    assert "64" in msg and "32" in msg  # legal values are listed
    assert "\n" not in msg


def test_illegal_groups_names_layer():
    specs = [LayerSpec.dense()] * 33
    specs[2] = LayerSpec.flgc(16)  # b01_project: 96 -> 24; 16 does not divide 24
    slot = get_model_family("mobilenetv2").slots(1.0)[2]
    assert (slot.in_channels, slot.out_channels) == (96, 24)
    with pytest.raises(ArchitectureError, match=slot.name) as err:
        validate(Architecture("mobilenetv2", 1.0, 10, tuple(specs)))
    assert "8" in str(err.value)


def test_unknown_layer_type_rejected():
    with pytest.raises(ArchitectureError):
        build_model(Architecture("vgg16", 1.0, 10, (LayerSpec("conv3d"),) + (LayerSpec.dense(),) * 11))
    with pytest.raises(ArchitectureError):
        LayerSpec.from_json({"type": "conv3d"})
    with pytest.raises(ArchitectureError):
        LayerSpec.from_label("conv3d:4")


@pytest.mark.parametrize("count", [0, 11, 13])
def test_wrong_number_of_specs(count):
    with pytest.raises(ArchitectureError, match="12"):
        build_model(Architecture("vgg16", 1.0, 10, (LayerSpec.dense(),) * count))


def test_unknown_model():
    with pytest.raises(ArchitectureError, match="resnet"):
        build_model(Architecture("resnet18", 1.0, 10, ()))


@pytest.mark.parametrize(
    "label,spec",
    [
        ("dense", LayerSpec.dense()),
        ("hetconv:4", LayerSpec.hetconv(4)),
        ("hetconv:1", LayerSpec.hetconv(1)),
        ("flgc:8", LayerSpec.flgc(8)),
        ("flgc:8:free", LayerSpec.flgc(8, balanced=False)),
    ],
)
def test_label_round_trip(label, spec):
    assert LayerSpec.from_label(label) == spec
    assert spec.label == label
    assert LayerSpec.from_label(spec.label) == spec
    assert LayerSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("label", ["hetconv:x", "hetconv", "flgc:4:maybe", "", "dense:2"])
def test_bad_labels(label):
    with pytest.raises(ArchitectureError):
        LayerSpec.from_label(label)


def test_free_flgc_groups_limit():
    slot = get_model_family("mobilenetv2").slots(1.0)[0]  # b00_project: 32 -> 16
    assert (slot.in_channels, slot.out_channels) == (32, 16)
    LayerSpec.flgc(16, balanced=False).check(slot)
    LayerSpec.flgc(5, balanced=False).check(slot)  # free groups need not divide
    with pytest.raises(ArchitectureError, match=slot.name):
        LayerSpec.flgc(17, balanced=False).check(slot)
    with pytest.raises(ArchitectureError):
        LayerSpec.flgc(0, balanced=False).check(slot)
    with pytest.raises(ArchitectureError):
        LayerSpec.flgc(5).check(slot)  # balanced must divide


# ----------------------------------------------------------------------------- layer types


def test_specs_place_layer_types():
    specs = [LayerSpec.dense()] * 12
    specs[3] = LayerSpec.hetconv(8)
    specs[7] = LayerSpec.flgc(4)
    specs[11] = LayerSpec.flgc(6, balanced=False)
    model = build_model(Architecture("vgg16", 1.0, 10, tuple(specs)))
    layers = searchable_modules(model)
    assert len(layers) == 12
    for i, layer in enumerate(layers):
        if i == 3:
            assert type(layer) is HetConv2d and layer.part == 8
        elif i == 7:
            assert type(layer) is FLGConv2d and layer.groups == 4 and layer.balanced
        elif i == 11:
            assert type(layer) is FLGConv2d and layer.groups == 6 and not layer.balanced
        else:
            assert type(layer) is nn.Conv2d


def test_mbv2_specs_place_layer_types():
    slots = get_model_family("mobilenetv2").slots(1.0)
    specs = [
        LayerSpec.flgc(2) if i % 3 == 0 else LayerSpec.hetconv(2) if i % 3 == 1 else LayerSpec.dense()
        for i in range(33)
    ]
    model = build_model(Architecture("mobilenetv2", 1.0, 10, tuple(specs)))
    layers = searchable_modules(model)
    assert len(layers) == len(slots) == 33
    for i, layer in enumerate(layers):
        expected = (FLGConv2d, HetConv2d, nn.Conv2d)[i % 3]
        assert type(layer) is expected, slots[i].name


@pytest.mark.parametrize("model_name", ["vgg16", "mobilenetv2"])
@pytest.mark.parametrize("width", [1.0, 0.25])
def test_searchable_module_i_is_slot_i(model_name, width):
    slots = get_model_family(model_name).slots(width)
    arch = dense_arch(model_name, width)
    model = build_model(arch)
    layers = searchable_modules(model)
    assert len(layers) == len(slots)
    sizes: dict[int, tuple] = {}
    handles = [
        layer.register_forward_hook(lambda m, i, o, k=k: sizes.__setitem__(k, (i[0].shape[-1], o.shape[-1])))
        for k, layer in enumerate(layers)
    ]
    if width < 1.0:  # run a forward pass only at small width
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, 32, 32))
    for h in handles:
        h.remove()
    for k, (slot, layer) in enumerate(zip(slots, layers)):
        assert (layer.in_channels, layer.out_channels) == (slot.in_channels, slot.out_channels), slot.name
        ks = layer.kernel_size if isinstance(layer.kernel_size, int) else layer.kernel_size[0]
        st = layer.stride if isinstance(layer.stride, int) else layer.stride[0]
        assert (ks, st) == (slot.kernel_size, slot.stride), slot.name
        if sizes:
            assert sizes[k] == (slot.input_size, slot.output_size), slot.name


# ----------------------------------------------------------------------------- forward/backward


def _forward_backward(arch: Architecture) -> None:
    torch.manual_seed(0)
    model = build_model(arch).train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, arch.num_classes)
    loss = nn.functional.cross_entropy(out, torch.tensor([0, 1]))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("space_name", SPACE_NAMES)
def test_forward_backward_width_025(space_name):
    space = get_space(space_name, width=0.25)
    values = space.uniform_values()
    _forward_backward(space.dense())
    _forward_backward(space.uniform(values[-1]))
    _forward_backward(random_arch(space, random.Random(1)))
