"""Tests for spaces/: built-in spaces, sampling with Optuna, uniform models, space files."""

from __future__ import annotations

import itertools
import json
import math

import optuna
import pytest

from models import Architecture, ArchitectureError, LayerSpec, get_model_family, validate
from spaces import SearchSpace, SpaceError, get_space, space_names

optuna.logging.set_verbosity(optuna.logging.WARNING)

BUILTIN = {"vgg_hetconv": 12, "vgg_flgc": 12, "mbv2_flgc": 33, "vgg_mixed": 12}


def _legal(spec: LayerSpec, slot) -> bool:
    if spec.type == "dense":
        return True
    value = spec.part if spec.type == "hetconv" else spec.groups
    return slot.in_channels % value == 0 and slot.out_channels % value == 0


# ----------------------------------------------------------------------------- built-in


def test_builtin_names():
    assert set(BUILTIN) <= set(space_names())


@pytest.mark.parametrize("name,layers", sorted(BUILTIN.items()))
@pytest.mark.parametrize("width", [1.0, 0.25])
def test_builtin_space_layers_and_legal_choices(name, layers, width):
    space = get_space(name, width=width)
    assert isinstance(space, SearchSpace)
    assert space.name == name and space.width == width
    assert len(space.slots) == len(space.choices) == layers
    assert list(space.slots) == get_model_family(space.model).slots(width)
    for slot, options in zip(space.slots, space.choices):
        assert options, slot.name
        assert len(set(options)) == len(options), slot.name
        for spec in options:
            assert _legal(spec, slot), (slot.name, spec.label)
            spec.check(slot)
    assert space.size == math.prod(len(o) for o in space.choices)


def test_vgg_hetconv_choices_are_powers_of_two():
    space = get_space("vgg_hetconv")
    for options in space.choices:
        assert [spec.label for spec in options] == [f"hetconv:{p}" for p in (1, 2, 4, 8, 16, 32, 64)]


def test_builtin_flgc_choices():
    for name in ("vgg_flgc", "mbv2_flgc"):
        for slot, options in zip(*(lambda s: (s.slots, s.choices))(get_space(name))):
            groups = [spec.groups for spec in options]
            assert all(spec.type == "flgc" and spec.balanced for spec in options)
            assert groups == [
                g for g in (1, 2, 4, 8, 16, 32) if slot.in_channels % g == 0 and slot.out_channels % g == 0
            ]


def test_vgg_mixed_choices():
    space = get_space("vgg_mixed")
    for options in space.choices:
        labels = [spec.label for spec in options]
        types = {spec.type for spec in options}
        assert types == {"dense", "hetconv", "flgc"}
        assert "hetconv:1" not in labels and "flgc:1" not in labels
        assert labels.count("dense") == 1


def test_unknown_space():
    with pytest.raises(SpaceError, match="nope"):
        get_space("nope")


@pytest.mark.parametrize("width", [0, -1, 5])
def test_bad_width(width):
    with pytest.raises(SpaceError):
        get_space("vgg_hetconv", width=width)


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_sample_with_optuna(name):
    space = get_space(name, width=0.25)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = [set() for _ in space.slots]
    for _ in range(25):
        trial = study.ask()
        arch = space.sample(trial)
        assert isinstance(arch, Architecture)
        assert arch.model == space.model and arch.width == 0.25 and len(arch.layers) == len(space.slots)
        validate(arch)
        assert trial.params == space.to_params(arch)
        assert space.from_params(space.to_params(arch)) == arch
        for i, spec in enumerate(arch.layers):
            assert spec in space.choices[i]
            seen[i].add(spec)
    assert all(len(s) > 1 for s in seen)


def test_from_params_errors():
    space = get_space("vgg_hetconv")
    params = space.to_params(space.uniform("4"))
    del params["conv05"]
    with pytest.raises(SpaceError, match="conv05"):
        space.from_params(params)
    params = space.to_params(space.uniform("4"))
    params["conv03"] = "flgc:4"
    with pytest.raises(SpaceError, match="conv03"):
        space.from_params(params)


# ----------------------------------------------------------------------------- uniform


def test_uniform():
    space = get_space("vgg_hetconv")
    assert space.uniform("4").layers == (LayerSpec.hetconv(4),) * 12
    assert space.uniform(4) == space.uniform("4") == space.uniform("hetconv:4")
    assert space.uniform("dense") == space.dense()
    assert space.dense().layers == (LayerSpec.dense(),) * 12
    assert space.uniform_values() == ["dense", "1", "2", "4", "8", "16", "32", "64"]
    assert get_space("mbv2_flgc").uniform("2").layers == (LayerSpec.flgc(2),) * 33
    assert get_space("mbv2_flgc").uniform_values() == ["dense", "1", "2", "4", "8"]  # 24-channel layers stop 16


def test_flgc_paper_baseline():
    """The FLGC paper's MobileNetV2: G = 8 on the 17 projection convs, expansions dense (G = 1)."""
    space = get_space("mbv2_flgc")
    arch = space.uniform("flgc-paper")
    assert space.contains(arch) and "flgc-paper" in space.baseline_values()
    assert "flgc-paper" not in space.uniform_values()  # not a uniform model
    specs = dict(zip((slot.name for slot in space.slots), arch.layers))
    assert sum(name.endswith("_project") for name in specs) == 17
    for name, spec in specs.items():
        assert spec == (LayerSpec.flgc(8) if name.endswith("_project") else LayerSpec.flgc(1)), name
    assert "flgc-paper" not in get_space("vgg_flgc").baseline_values()  # a space owns its baselines
    with pytest.raises(SpaceError, match="flgc-paper"):
        space.uniform("flgc-papers")  # the error lists it among the legal values


def test_baselines_queue_the_published_model():
    """--baselines queues what baseline_architectures returns: flgc-paper included, distinct."""
    from search.backends.study import baseline_architectures

    space = get_space("mbv2_flgc", width=0.25)
    queued = baseline_architectures(space)
    assert queued["flgc-paper"] == space.uniform("flgc-paper")
    assert len(set(queued.values())) == len(queued)


def test_named_baseline_dropped_where_illegal():
    """A named baseline that is not a candidate of the space at this width is not offered."""
    from spaces.builtin import flgc_groups

    baselines = {"g32": lambda slot: LayerSpec.flgc(32), "g2": lambda slot: LayerSpec.flgc(2)}
    space = SearchSpace.from_choices("t", "t", "mobilenetv2", 0.25, 10, "flgc", flgc_groups, baselines)
    assert space.baseline_values()[-1:] == ["g2"]  # 8-channel layers cannot take 32 groups


def test_uniform_values_are_all_legal_uniforms():
    for name in BUILTIN:
        space = get_space(name)
        for value in space.baseline_values():
            validate(space.uniform(value))


@pytest.mark.parametrize("value", ["3", "128", "flgc:4"])
def test_illegal_uniform(value):
    space = get_space("vgg_hetconv")
    with pytest.raises(SpaceError) as err:
        space.uniform(value)
    msg = str(err.value)
    assert "legal" in msg and "64" in msg and "dense" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("value", ["abc", "-1", "hetconv:x"])
def test_unreadable_uniform(value):
    with pytest.raises(ValueError) as err:  # SpaceError or ArchitectureError, both ValueErrors
        get_space("vgg_hetconv").uniform(value)
    assert "\n" not in str(err.value)


def test_illegal_uniform_mbv2_lists_legal():
    with pytest.raises(SpaceError, match="8"):
        get_space("mbv2_flgc").uniform("16")


def test_vgg_mixed_uniform():
    space = get_space("vgg_mixed")
    assert space.uniform("4").layers[0] == LayerSpec.hetconv(4)
    assert space.uniform("flgc:4").layers[0] == LayerSpec.flgc(4)
    values = space.uniform_values()
    assert "flgc:32" in values and "64" in values


def test_uniform_values_have_no_duplicates():
    for name in BUILTIN:
        values = get_space(name).uniform_values()
        assert len(values) == len(set(values)), (name, values)


def test_illegal_uniform_lists_each_legal_value_once():
    """In vgg_mixed 'dense' is itself a choice of every layer; it is listed once."""
    with pytest.raises(SpaceError) as err:
        get_space("vgg_mixed").uniform("7")
    legal = str(err.value).split("legal: ", 1)[1].split(", ")
    assert len(legal) == len(set(legal)), legal


# ----------------------------------------------------------------------------- fingerprint


def test_fingerprint():
    a = get_space("vgg_hetconv", width=1.0).fingerprint()
    assert a == get_space("vgg_hetconv", width=1.0).fingerprint()
    assert a != get_space("vgg_hetconv", width=0.5).fingerprint()
    assert a != get_space("vgg_mixed", width=1.0).fingerprint()
    json.dumps(a)  # storable in a study's user attributes


def test_fingerprint_of_files_differs_by_choices(tmp_path):
    one = tmp_path / "one.yaml"
    two = tmp_path / "two.yaml"
    one.write_text("name: s\nmodel: vgg16\nchoices: [dense, 'hetconv:2']\n")
    two.write_text("name: s\nmodel: vgg16\nchoices: [dense, 'hetconv:4']\n")
    assert get_space(str(one)).fingerprint() != get_space(str(two)).fingerprint()
    assert get_space(str(one)).fingerprint() == get_space(str(one)).fingerprint()


# ----------------------------------------------------------------------------- space files


GOOD_YAML = """\
name: my_space
description: a test space
model: vgg16
width: 0.5
choices: [dense, "hetconv:2", "hetconv:64", "flgc:4", "flgc:64"]
layers:
  conv02: [dense]
  conv13: ["hetconv:8", "flgc:8", "flgc:3:free"]
"""


def _check_good(space: SearchSpace, width: float = 0.5) -> None:
    assert space.name == "my_space" and space.model == "vgg16" and space.width == width
    slots = get_model_family("vgg16").slots(width)
    names = [s.name for s in space.slots]
    assert names == [s.name for s in slots]
    by_name = dict(zip(names, space.choices))
    assert [s.label for s in by_name["conv02"]] == ["dense"]
    assert [s.label for s in by_name["conv13"]] == ["hetconv:8", "flgc:8", "flgc:3:free"]
    for slot, options in zip(space.slots, space.choices):
        if slot.name in ("conv02", "conv13"):
            continue
        expected = [
            label
            for label in ["dense", "hetconv:2", "hetconv:64", "flgc:4", "flgc:64"]
            if _legal(LayerSpec.from_label(label), slot)
        ]
        assert [s.label for s in options] == expected, slot.name
    # at width 0.5 the first blocks have 32 channels: 64 is dropped there, kept at 256
    assert "hetconv:64" not in [s.label for s in by_name["conv03"]]
    assert "hetconv:64" in [s.label for s in by_name["conv12"]]


def test_good_yaml_file(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(GOOD_YAML)
    space = get_space(str(path))
    _check_good(space)
    arch = space.uniform("dense")
    validate(arch)


def test_good_json_file(tmp_path):
    import yaml

    path = tmp_path / "space.json"
    path.write_text(json.dumps(yaml.safe_load(GOOD_YAML)))
    _check_good(get_space(str(path)))


def test_file_lists_the_layers_a_choice_does_not_fit(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(GOOD_YAML)
    space = get_space(str(path))
    unfit = dict(space.unfit)
    # conv02 and conv13 have their own lists; at width 0.5 only conv03 (32 -> 64) has fewer
    # than 64 input channels among the others
    assert unfit == {"hetconv:64": ("conv03",), "flgc:64": ("conv03",)}, unfit
    assert "unfit" not in space.fingerprint()


def test_width_argument_overrides_file(tmp_path):
    path = tmp_path / "space.yml"
    path.write_text(GOOD_YAML)
    space = get_space(str(path), width=1.0)
    assert space.width == 1.0


def test_file_sample_with_optuna(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(GOOD_YAML)
    space = get_space(str(path))
    study = optuna.create_study()
    arch = space.sample(study.ask())
    validate(arch)
    assert space.from_params(space.to_params(arch)) == arch


BAD_FILES = [
    ("bad.yaml", "model: vgg16\nchoices: [dense, 'hetconv:2'\n", "YAML"),
    ("bad.json", '{"model": "vgg16", "choices": ["dense",]}', "JSON"),
    ("list.yaml", "- model\n- vgg16\n", "mapping"),
    ("scalar.json", '"vgg16"', "mapping"),
    ("unknown_key.yaml", "model: vgg16\nchoices: [dense]\nbudget: 3\n", "budget"),
    ("unknown_model.yaml", "model: resnet50\nchoices: [dense]\n", "resnet50"),
    ("unknown_layer.yaml", "model: vgg16\nchoices: [dense]\nlayers:\n  conv99: [dense]\n", "conv99"),
    ("illegal_layer.yaml", "model: vgg16\nchoices: [dense]\nlayers:\n  conv05: ['hetconv:3']\n", "conv05"),
    (
        "illegal_free.yaml",
        "model: mobilenetv2\nchoices: [dense]\nlayers:\n  b00_project: ['flgc:17:free']\n",
        "b00_project",
    ),
    ("missing_model.yaml", "choices: [dense]\n", "model"),
    ("empty_choices.yaml", "model: vgg16\nchoices: []\n", "choices"),
    ("bad_label.yaml", "model: vgg16\nchoices: [dense, 'hetconv:x']\n", "hetconv:x"),
    (
        "bad_label_layer.json",
        '{"model": "vgg16", "choices": ["dense"], "layers": {"conv04": ["flgc:two"]}}',
        "flgc:two",
    ),
    ("nothing_legal.yaml", "model: vgg16\nchoices: ['hetconv:128']\n", "conv02"),
    # a choice no layer can take is a mistake, not a value to drop (one that fits some is fine)
    ("part_zero.yaml", "model: vgg16\nchoices: [dense, 'hetconv:0', 'hetconv:2']\n", "choice hetconv:0 fits no layer"),
    ("part_three.yaml", "model: vgg16\nchoices: [dense, 'hetconv:3']\n", "choice hetconv:3 fits no layer at width 1"),
    ("groups_too_many.yaml", "model: vgg16\nwidth: 0.25\nchoices: [dense, 'flgc:256']\n", "flgc:256 fits no layer"),
    ("bad_width.yaml", "model: vgg16\nwidth: wide\nchoices: [dense]\n", "width"),
    ("empty.yaml", "", "mapping"),
]


@pytest.mark.parametrize("filename,text,needle", BAD_FILES, ids=[f[0] for f in BAD_FILES])
def test_bad_space_files(tmp_path, filename, text, needle):
    path = tmp_path / filename
    path.write_text(text)
    with pytest.raises(SpaceError) as err:
        get_space(str(path))
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert needle in msg, msg


def test_missing_space_file(tmp_path):
    with pytest.raises(SpaceError) as err:
        get_space(str(tmp_path / "absent.yaml"))
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- HetConv nesting


def _pair_counts(n: int, p1: int, p2: int, strided: bool) -> list[list[int]]:
    """Channels shared by filter group a of a HetConv layer (part p1) and input group b of the
    next one (part p2): the whole connection structure between the two, up to relabelling."""
    counts = [[0] * p2 for _ in range(p1)]
    for j in range(n):
        a, b = (j % p1, j % p2) if strided else (j // (n // p1), j // (n // p2))
        counts[a][b] += 1
    return counts


def _same_up_to_relabelling(x: list[list[int]], y: list[list[int]]) -> bool:
    rows, cols = range(len(x)), range(len(x[0]))
    return any(
        all(x[r][c] == y[pr[r]][pc[c]] for r in rows for c in cols)
        for pr in itertools.permutations(rows)
        for pc in itertools.permutations(cols)
    )


@pytest.mark.parametrize("p1,p2", [(2, 4), (4, 2), (2, 6), (3, 6), (2, 3), (4, 6), (6, 4)])
def test_block_layout_is_the_papers_only_for_nested_parts(p1, p2):
    """Brute force over relabellings: two connected layers in the block form equal the paper's
    strided form up to a channel permutation exactly when the parts nest, which is the rule
    the space and the architecture check enforce."""
    n = 12
    equal = _same_up_to_relabelling(_pair_counts(n, p1, p2, False), _pair_counts(n, p1, p2, True))
    nested = p1 % p2 == 0 or p2 % p1 == 0
    assert equal == nested
    # width 0.75: 48..384 channels, which 3 and 6 divide
    arch = Architecture("vgg16", 0.75, 10, (LayerSpec.hetconv(p1), LayerSpec.hetconv(p2)) + (LayerSpec.dense(),) * 10)
    if nested:
        validate(arch)
    else:
        with pytest.raises(ArchitectureError, match="do not nest") as err:
            validate(arch)
        assert "\n" not in str(err.value)


def test_space_mixing_parts_that_do_not_nest_is_refused(tmp_path):
    path = tmp_path / "mix.yaml"
    path.write_text(
        'model: vgg16\nwidth: 0.75\nchoices: [dense, "hetconv:2", "hetconv:4"]\nlayers:\n  conv13: ["hetconv:3"]\n'
    )
    with pytest.raises(SpaceError) as err:
        get_space(str(path))
    message = str(err.value)
    assert "2 and 3 do not nest" in message and "powers of two" in message and "\n" not in message
