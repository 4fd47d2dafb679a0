"""Property tests (hypothesis) of architectures, spaces and the FLOPs closed form.

For every built-in space, random *legal* architectures (one choice per layer, drawn from
``space.choices``) must build, run, round-trip through JSON exactly and cost exactly
``fixed part + sum(slot_macs)``; random *illegal* ones must be rejected with one-line
:class:`ArchitectureError` messages that name the layer.

Time budget (~1 min on 2 shared CPU cores): forward passes only at width 0.25, few examples
for anything that builds a model; pure-Python properties get more examples.
"""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import Architecture, ArchitectureError, LayerSpec, build_model, validate
from search.evaluation.cost import count_cost, slot_macs
from spaces import get_space, space_names

SPACES = ("vgg_hetconv", "vgg_flgc", "mbv2_flgc", "vgg_mixed")
WIDTHS = (0.25, 0.5)  # every property
COUNT_WIDTHS = (0.25, 0.5, 1.0)  # FLOPs counting (no explicit forward pass at 1.0)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODEL = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_every_builtin_space_is_covered():
    assert sorted(space_names()) == sorted(SPACES)


@functools.cache
def space_at(name: str, width: float):
    return get_space(name, width=width)


@st.composite
def legal_architectures(draw, name: str, widths=WIDTHS):
    width = draw(st.sampled_from(widths))
    space = space_at(name, width)
    specs = tuple(draw(st.sampled_from(options)) for options in space.choices)
    return space, Architecture(space.model, space.width, space.num_classes, specs)


def _one_line(text: str) -> bool:
    return "\n" not in text and "\r" not in text and text.strip() != ""


def _common_divisors(a: int, b: int) -> set[int]:
    g = math.gcd(a, b)
    return {d for d in range(1, g + 1) if g % d == 0}


# ----------------------------------------------------------------------- legal candidates


@pytest.mark.parametrize("name", SPACES)
@MODEL
@given(data=st.data())
def test_legal_architecture_builds_and_runs(name, data):
    space, arch = data.draw(legal_architectures(name, widths=(0.25,)))
    assert space.contains(arch)
    validate(arch)
    model = build_model(arch).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, space.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", SPACES)
@FAST
@given(data=st.data(), num_classes=st.sampled_from([10, 100]))
def test_legal_architecture_json_round_trip(name, data, num_classes):
    _, arch = data.draw(legal_architectures(name, widths=COUNT_WIDTHS))
    arch = Architecture(arch.model, arch.width, num_classes, arch.layers)
    text = arch.dumps()
    assert Architecture.loads(text) == arch
    assert Architecture.from_json(arch.to_json()) == arch
    # through a real JSON document too (what the storage and exported configs hold)
    assert Architecture.from_json(json.loads(json.dumps(arch.to_json()))) == arch
    assert Architecture.loads(text).dumps() == text


@pytest.mark.parametrize("name", SPACES)
@FAST
@given(data=st.data())
def test_space_params_round_trip(name, data):
    space, arch = data.draw(legal_architectures(name, widths=COUNT_WIDTHS))
    params = space.to_params(arch)
    assert list(params) == [slot.name for slot in space.slots]
    assert all(isinstance(v, str) for v in params.values())
    assert space.from_params(params) == arch


@functools.cache
def fixed_macs(model: str, width: float, num_classes: int) -> int:
    """MACs outside the searchable layers: hooked count of the dense model minus the closed form
    of its searchable layers."""
    space = next(space_at(n, width) for n in SPACES if space_at(n, width).model == model)
    dense = space.dense()
    counted = round(count_cost(build_model(dense)).mflops * 1e6)
    return counted - sum(slot_macs(slot, spec) for slot, spec in zip(space.slots, dense.layers))


@pytest.mark.parametrize("name", SPACES)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_hooked_flops_equal_closed_form(name, data):
    space, arch = data.draw(legal_architectures(name, widths=COUNT_WIDTHS))
    torch.manual_seed(0)
    counted = round(count_cost(build_model(arch)).mflops * 1e6)
    closed = fixed_macs(space.model, space.width, space.num_classes) + sum(
        slot_macs(slot, spec) for slot, spec in zip(space.slots, arch.layers)
    )
    assert counted == closed, f"{arch.summary()} at width {space.width}: hooked {counted} != closed form {closed}"


# ----------------------------------------------------------------------- illegal candidates


@st.composite
def non_dividing(draw, name: str):
    """A legal architecture with one layer's part/groups replaced by a value in 3..200 that
    does not divide that layer's channel counts."""
    space, arch = draw(legal_architectures(name))
    i = draw(st.integers(0, len(space.slots) - 1))
    slot = space.slots[i]
    divisors = _common_divisors(slot.in_channels, slot.out_channels)
    value = draw(st.integers(3, 200).filter(lambda v: v not in divisors))
    kind = draw(st.sampled_from(["hetconv", "flgc"]))
    spec = LayerSpec.hetconv(value) if kind == "hetconv" else LayerSpec.flgc(value)
    layers = list(arch.layers)
    layers[i] = spec
    return space, slot, Architecture(arch.model, arch.width, arch.num_classes, tuple(layers))


@pytest.mark.parametrize("name", SPACES)
@FAST
@given(data=st.data())
def test_non_dividing_part_or_groups_rejected_naming_the_layer(name, data):
    space, slot, arch = data.draw(non_dividing(name))
    for check in (validate, build_model, lambda a: validate(Architecture.loads(a.dumps()))):
        with pytest.raises(ArchitectureError) as info:
            check(arch)
        message = str(info.value)
        assert _one_line(message), message
        assert slot.name in message, message
    # and the space does not take it either
    assert not space.contains(arch)


@pytest.mark.parametrize("name", SPACES)
@FAST
@given(data=st.data())
def test_free_flgc_groups_out_of_range_rejected(name, data):
    space, arch = data.draw(legal_architectures(name))
    i = data.draw(st.integers(0, len(space.slots) - 1))
    slot = space.slots[i]
    limit = min(slot.in_channels, slot.out_channels)
    groups = data.draw(st.one_of(st.integers(-5, 0), st.integers(limit + 1, limit + 200)))
    layers = list(arch.layers)
    layers[i] = LayerSpec.flgc(groups, balanced=False)
    bad = Architecture(arch.model, arch.width, arch.num_classes, tuple(layers))
    with pytest.raises(ArchitectureError) as info:
        validate(bad)
    assert _one_line(str(info.value)) and slot.name in str(info.value), str(info.value)


@pytest.mark.parametrize("name", SPACES)
@FAST
@given(data=st.data())
def test_wrong_number_of_layer_specs_rejected(name, data):
    space, arch = data.draw(legal_architectures(name))
    layers = list(arch.layers)
    if data.draw(st.booleans(), label="add"):
        options = space.choices[data.draw(st.integers(0, len(space.choices) - 1))]
        layers.insert(data.draw(st.integers(0, len(layers))), data.draw(st.sampled_from(options)))
    else:
        del layers[data.draw(st.integers(0, len(layers) - 1))]
    bad = Architecture(arch.model, arch.width, arch.num_classes, tuple(layers))
    for check in (validate, build_model, lambda a: validate(Architecture.loads(a.dumps()))):
        with pytest.raises(ArchitectureError) as info:
            check(bad)
        message = str(info.value)
        assert _one_line(message), message
        assert "layer" in message, message
        assert str(len(space.slots)) in message and str(len(layers)) in message, message


KNOWN_TYPES = {"dense", "hetconv", "flgc"}


@pytest.mark.parametrize("name", SPACES)
@FAST
@given(data=st.data(), kind=st.text(min_size=0, max_size=12).filter(lambda t: t not in KNOWN_TYPES))
def test_unknown_layer_type_rejected(name, data, kind):
    space, arch = data.draw(legal_architectures(name))
    i = data.draw(st.integers(0, len(space.slots) - 1))
    # in JSON: rejected while reading
    document = arch.to_json()
    document["layers"][i] = {"type": kind}
    with pytest.raises(ArchitectureError) as info:
        Architecture.from_json(json.loads(json.dumps(document)))
    message = str(info.value)
    assert _one_line(message) and "layer" in message, message
    # built in Python: rejected by validation, naming the slot
    layers = list(arch.layers)
    layers[i] = LayerSpec(kind)
    with pytest.raises(ArchitectureError) as info:
        validate(Architecture(arch.model, arch.width, arch.num_classes, tuple(layers)))
    message = str(info.value)
    assert _one_line(message) and space.slots[i].name in message, message


@pytest.mark.parametrize("name", SPACES)
@settings(max_examples=20, deadline=None)
@given(data=st.data(), model=st.text(min_size=1, max_size=12).filter(lambda t: t not in ("vgg16", "mobilenetv2")))
def test_unknown_model_rejected(name, data, model):
    _, arch = data.draw(legal_architectures(name))
    bad = Architecture(model, arch.width, arch.num_classes, arch.layers)
    for check in (validate, build_model, lambda a: validate(Architecture.loads(a.dumps()))):
        with pytest.raises(ArchitectureError) as info:
            check(bad)
        message = str(info.value)
        # No layer to name here: the message names the model (and the known ones) instead.
        assert _one_line(message), message
        assert repr(model) in message and "vgg16" in message, message


@pytest.mark.parametrize(
    "field,value",
    [("part", True), ("groups", True), ("balanced", "false"), ("balanced", "no")],
    ids=["part-bool", "groups-bool", "balanced-str-false", "balanced-str-no"],
)
def test_json_layer_spec_with_wrongly_typed_field_rejected(field, value):
    """A config with ``"balanced": "false"`` must not silently become a balanced FLGC layer,
    nor ``"part": true`` a HetConv with P = 1."""
    base = {"type": "hetconv", "part": 4} if field == "part" else {"type": "flgc", "groups": 4, "balanced": True}
    document = {**base, field: value}
    with pytest.raises(ArchitectureError):
        spec = LayerSpec.from_json(document)
        pytest.fail(f"{document} was read as {spec}")


# ----------------------------------------------------------------------- layer specs

specs = st.one_of(
    st.just(LayerSpec.dense()),
    st.builds(LayerSpec.hetconv, st.integers(1, 4096)),
    st.builds(LayerSpec.flgc, st.integers(1, 4096), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(spec=specs)
def test_layer_spec_label_and_json_round_trip(spec):
    assert LayerSpec.from_label(spec.label) == spec
    assert LayerSpec.from_json(spec.label) == spec
    assert LayerSpec.from_json(spec.to_json()) == spec
    assert LayerSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert ":" not in spec.label or spec.label.split(":")[0] == spec.type


@settings(max_examples=200, deadline=None)
@given(label=st.text(max_size=20))
def test_unreadable_labels_rejected_in_one_line(label):
    try:
        spec = LayerSpec.from_label(label)
    except ArchitectureError as err:
        assert _one_line(str(err)) and "layer" in str(err)
    else:
        # whatever is accepted must be a well-formed spec that prints back to a label it reads
        assert spec.type in KNOWN_TYPES
        assert LayerSpec.from_label(spec.label) == spec
