"""Tests for models.deploy: the inference form of trained models (docs/layers.md).

For every built-in space, uniform and random architectures with randomized FLGC logits and
BatchNorm statistics: the deployed model (HetConv ``split`` and ``dense``, with and without
folding of FLGC's channel gathers) gives the trained model's eval outputs, holds only standard
modules, scripts with TorchScript, and keeps no FLGC logits. Also: where gathers fold, free
(unbalanced) FLGC, parameter counts, ONNX export and the ``deploy`` command.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
import subprocess
import warnings
from pathlib import Path

import optuna
import pytest
import torch
from cli_process import cli_env, run_cli
from torch import nn

from layers import ChannelGather, ConvSum, FLGConv2d, GroupSplitConv, HetConv2d
from models import Architecture, LayerSpec, build_model, count_gathers, deploy
from search.evaluation.cost import count_params
from spaces import get_space, space_names

REPO = Path(__file__).resolve().parents[1]
WIDTH = 0.25
BUILTIN = ("vgg_hetconv", "vgg_flgc", "mbv2_flgc", "vgg_mixed")
RANDOM_ARCHS = 3  # random architectures per space, besides every uniform one
RTOL = 1e-4  # float32, relative to the output scale
RTOL_FLOAT64 = 1e-10
ALLOWED_OWN = (ChannelGather, ConvSum, GroupSplitConv)


@pytest.fixture(autouse=True)
def _no_deprecation_noise():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def sample_architecture(space_name: str, seed: int) -> Architecture:
    """A random candidate of the space, drawn the way a search draws it (an Optuna trial)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = get_space(space_name, WIDTH)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return space.sample(study.ask())


def architecture_of(case: str) -> Architecture:
    space_name, kind, value = case.split("/")
    if kind == "uniform":
        return get_space(space_name, WIDTH).uniform(value)
    return sample_architecture(space_name, int(value))


@torch.no_grad()
def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Make a freshly built model look trained: FLGC logits far from ties (so the learned
    groupings are non-trivial permutations) and BatchNorm statistics and affine parameters
    away from the identity (so that folding a permutation into the wrong channel shows)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FLGConv2d):
            m.in_logits.copy_(torch.randn(m.in_logits.shape, generator=gen))
            m.out_logits.copy_(torch.randn(m.out_logits.shape, generator=gen))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
            m.weight.copy_(0.5 + torch.rand(n, generator=gen))
            m.bias.copy_(0.2 * torch.randn(n, generator=gen))
    return model


def trained_like(arch: Architecture, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(build_model(arch), seed).to(dtype).eval()


def batch(dtype: torch.dtype = torch.float32, n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)).to(dtype)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL, what: str = "") -> None:
    """Max absolute difference within ``rtol`` of the output scale (max |expected|)."""
    assert actual.shape == expected.shape
    scale = expected.abs().max().item()
    assert scale > 0, "degenerate test: the reference output is all zero"
    error = (actual - expected).abs().max().item()
    assert error <= rtol * scale, f"{what}: max |difference| {error:.3g} > {rtol:g} x output scale {scale:.3g}"


def assert_standard_modules(deployed: nn.Module) -> None:
    """No training-form layer and no FLGC logits left; every module is a standard torch.nn
    module, one of the three deployed containers, or a model family's own structural module
    (VGG16, MobileNetV2, InvertedResidual: no parameters or buffers of its own)."""
    for name, m in deployed.named_modules():
        assert not isinstance(m, (HetConv2d, FLGConv2d)), f"{name} is still {type(m).__name__}"
        if isinstance(m, ALLOWED_OWN) or type(m).__module__.startswith("torch.nn."):
            continue
        assert type(m).__module__.startswith("models."), f"{name}: unexpected module type {type(m)}"
        own = list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))
        assert not own, f"{name} ({type(m).__name__}) holds its own parameters or buffers"
    names = [n for n, _ in deployed.named_parameters()] + list(deployed.state_dict())
    assert not [n for n in names if "logits" in n], "deployed model keeps FLGC logits"
    assert not deployed.training
    # Modules whose forward depends on the mode are in eval mode.
    mode_dependent = (nn.modules.batchnorm._BatchNorm, nn.Dropout)
    assert not [n for n, m in deployed.named_modules() if isinstance(m, mode_dependent) and m.training]


def balanced_flgc_layers(model: nn.Module) -> int:
    return sum(isinstance(m, FLGConv2d) and m.balanced for m in model.modules())


def script(module: nn.Module) -> torch.jit.ScriptModule:
    return torch.jit.script(module)


# ---------------------------------------------------------------------------
# exactness, structure, TorchScript, gathers: every built-in space
# ---------------------------------------------------------------------------


def test_the_builtin_spaces_are_all_covered():
    assert set(BUILTIN) <= set(space_names())


def _cases() -> list[str]:
    cases = []
    for name in space_names():
        cases += [f"{name}/uniform/{v}" for v in get_space(name, WIDTH).uniform_values()]
        cases += [f"{name}/random/{seed}" for seed in range(RANDOM_ARCHS)]
    return cases


@pytest.mark.parametrize("case", _cases())
def test_deploy_matches_trained_model(case):
    arch = architecture_of(case)
    model = trained_like(arch, seed=sum(map(ord, case)))
    x = batch()
    with torch.no_grad():
        expected = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gathers = {}
    n_split = sum(isinstance(m, HetConv2d) and m.part > 1 for m in model.modules())
    for form in ("split", "dense"):
        for fold in (True, False):
            deployed = deploy(model, hetconv_form=form, fold=fold)
            assert_standard_modules(deployed)
            with torch.no_grad():
                assert_close(deployed(x), expected, what=f"{case} form={form} fold={fold}")
            gathers[form, fold] = count_gathers(deployed)
            if fold:  # the dense HetConv form has no ConvSum, split has one per HetConv with P > 1
                assert sum(isinstance(m, ConvSum) for m in deployed.modules()) == (n_split if form == "split" else 0)
            # Scripting costs ~1 s for MobileNetV2: only where the two forms differ.
            if fold and (form == "split" or n_split):
                scripted = script(deployed)
                with torch.no_grad():
                    assert_close(scripted(x), expected, what=f"{case} form={form} scripted")
        assert gathers[form, True] <= gathers[form, False]
    # Without folding, every balanced FLGC keeps its two gathers.
    assert gathers["split", False] == gathers["dense", False] == 2 * balanced_flgc_layers(model)
    # With no FLGC at all, nothing to gather.
    if balanced_flgc_layers(model) == 0:
        assert gathers["split", True] == gathers["dense", True] == 0
    # deploy works on a copy: the trained model is untouched.
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert any(isinstance(m, (HetConv2d, FLGConv2d)) for m in model.modules()) == any(
        s.type != "dense" for s in arch.layers
    )


@pytest.mark.parametrize(
    "case", ["vgg_mixed/random/0", "mbv2_flgc/uniform/4", "vgg_hetconv/uniform/4"], ids=lambda c: c.replace("/", "-")
)
@pytest.mark.parametrize("form", ["split", "dense"])
def test_deploy_is_exact_in_float64(case, form):
    model = trained_like(architecture_of(case), seed=3, dtype=torch.float64)
    x = batch(torch.float64)
    deployed = deploy(model, hetconv_form=form)
    assert next(deployed.parameters()).dtype == torch.float64
    with torch.no_grad():
        assert_close(deployed(x), model(x), rtol=RTOL_FLOAT64, what=f"{case} float64")


def test_deploy_of_a_model_in_training_mode_returns_eval_copy():
    model = trained_like(get_space("vgg_mixed", WIDTH).uniform("flgc:4")).train()
    deployed = deploy(model)
    assert model.training and all(m.training for m in model.modules())
    assert not deployed.training
    model.eval()
    x = batch()
    with torch.no_grad():
        assert_close(deployed(x), model(x))


@pytest.mark.parametrize("case", ["vgg_hetconv/uniform/dense", "vgg_mixed/random/0", "mbv2_flgc/uniform/2"])
def test_every_deployed_submodule_is_in_eval_mode(case):
    deployed = deploy(trained_like(architecture_of(case)))
    assert not [name for name, m in deployed.named_modules() if m.training]


def test_unknown_forms_are_rejected():
    model = trained_like(get_space("vgg_mixed", WIDTH).uniform("flgc:4"))
    with pytest.raises(ValueError, match="hetconv_form 'sparse'; use split, dense, auto"):
        deploy(model, hetconv_form="sparse")
    with pytest.raises(ValueError, match="flgc_form 'sparse'; use grouped, dense, auto"):
        deploy(model, flgc_form="sparse")
    with pytest.raises(ValueError, match="needs an example_input"):
        deploy(model, flgc_form="auto")


# ---------------------------------------------------------------------------
# FLGC forms: grouped (gathers folded where exact), dense (no gathers), auto
# ---------------------------------------------------------------------------

FLGC_CASES = ["vgg_flgc/random/0", "mbv2_flgc/uniform/4", "mbv2_flgc/random/1", "vgg_mixed/random/2"]


def grouped_convs(model: nn.Module) -> int:
    """Grouped convolutions that are not depthwise (what a grouped FLGC layer deploys to)."""
    return sum(isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels for m in model.modules())


@pytest.mark.parametrize("case", FLGC_CASES, ids=lambda c: c.replace("/", "-"))
def test_flgc_dense_form_is_exact_and_needs_no_gather(case):
    model = trained_like(architecture_of(case), seed=5)
    x = batch()
    deployed = deploy(model, hetconv_form="dense", flgc_form="dense")  # HetConv dense too: no grouped conv left
    assert_standard_modules(deployed)
    assert count_gathers(deployed) == 0
    assert grouped_convs(deployed) == 0 and not any(isinstance(m, GroupSplitConv) for m in deployed.modules())
    with torch.no_grad():
        assert_close(deployed(x), model(x), what=f"{case} flgc dense")
        assert_close(script(deployed)(x), model(x), what=f"{case} flgc dense scripted")
    model64 = trained_like(architecture_of(case), seed=5, dtype=torch.float64)
    with torch.no_grad():
        x64 = batch(torch.float64)
        assert_close(deploy(model64, flgc_form="dense")(x64), model64(x64), rtol=RTOL_FLOAT64, what=f"{case} float64")


@pytest.mark.parametrize("case", FLGC_CASES, ids=lambda c: c.replace("/", "-"))
def test_flgc_auto_form_is_exact_and_between_the_two(case):
    model = trained_like(architecture_of(case), seed=6)
    x = batch().contiguous(memory_format=torch.channels_last)
    grouped = deploy(model, flgc_form="grouped")
    auto = deploy(model, hetconv_form="auto", flgc_form="auto", example_input=x)
    assert_standard_modules(auto)
    with torch.no_grad():
        assert_close(auto(x), model(x), what=f"{case} flgc auto")
    # Every FLGC layer became one of its two forms: some grouped convs may have become dense,
    # none was added, and switching layers to dense only ever removes gathers.
    assert grouped_convs(auto) <= grouped_convs(grouped)
    assert count_gathers(auto) <= count_gathers(grouped)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_channel_gather_as_conv_equals_the_index_copy(dtype, layout):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 5, 5, generator=gen, dtype=dtype).contiguous(memory_format=layout)
    for index in (torch.randperm(12, generator=gen), torch.tensor([3, 3, 0, 11])):  # a permutation, a subset
        gather = ChannelGather(index)
        expected = x[:, index]
        assert torch.equal(gather(x), expected)
        gather.run_as_conv(True, 12, dtype)
        assert torch.equal(gather(x), expected)  # one 1.0 per output: exact, not approximately
        assert torch.equal(script(gather)(x), expected)
        gather.run_as_conv(False, 12, dtype)
        assert torch.equal(gather(x), expected) and gather.selection.numel() == 0


def _fake_clock(gather_ms: float):
    """A deterministic stand-in for timing a module: 1 ms per MFLOP of a convolution, and
    ``gather_ms`` per channel gather, so that the choice of ``auto`` is known in advance."""

    def median_ms(layer: nn.Module, x: torch.Tensor, repeats: int = 7) -> float:
        if isinstance(layer, ChannelGather):
            return gather_ms / 2 if layer.as_conv else gather_ms  # the 1x1-conv form is the faster
        macs = 0.0
        for m in layer.modules():
            if isinstance(m, nn.Conv2d):
                out = x.shape[-1] // m.stride[0]
                macs += m.weight.numel() * out * out * x.shape[0]
        return macs / 1e6

    return median_ms


@pytest.mark.parametrize("case", ["mbv2_flgc/uniform/4", "vgg_flgc/random/0"], ids=lambda c: c.replace("/", "-"))
def test_flgc_auto_keeps_grouped_when_gathers_are_free_and_removes_them_when_they_are_not(case, monkeypatch):
    deploy_module = importlib.import_module("models.deploy")  # "models.deploy" the attribute is the function

    model = trained_like(architecture_of(case), seed=7)
    x = batch()
    grouped = deploy(model, flgc_form="grouped")
    assert count_gathers(grouped) > 0  # the case needs gathers that folding cannot remove

    monkeypatch.setattr(deploy_module, "_median_ms", _fake_clock(gather_ms=0.0))
    free = deploy(model, flgc_form="auto", example_input=x)
    assert grouped_convs(free) == grouped_convs(grouped) and count_gathers(free) == count_gathers(grouped)

    # Cheap gathers whose 1x1-conv form is the faster: each one left runs as a conv, exactly.
    monkeypatch.setattr(deploy_module, "_median_ms", _fake_clock(gather_ms=1e-9))
    cheap = deploy(model, flgc_form="auto", example_input=x)
    gathers = [m for m in cheap.modules() if isinstance(m, ChannelGather)]
    assert gathers and all(g.as_conv for g in gathers)
    with torch.no_grad():
        assert_close(cheap(x), model(x), what=f"{case} auto with conv gathers")
        assert_close(script(cheap)(x), model(x), what=f"{case} auto with conv gathers, scripted")

    monkeypatch.setattr(deploy_module, "_median_ms", _fake_clock(gather_ms=1e6))
    costly = deploy(model, flgc_form="auto", example_input=x)
    assert count_gathers(costly) == 0  # any gather costs more than the densest model
    if case.startswith("vgg"):  # in VGG most gathers fold: those layers must stay grouped
        assert grouped_convs(costly) > 0, "layers whose gathers fold away anyway should stay grouped"
    # (In MobileNetV2 every grouped pointwise conv alone leaves one gather at a residual sum.)
    with torch.no_grad():
        assert_close(costly(x), model(x), what=f"{case} auto with costly gathers")


# ---------------------------------------------------------------------------
# where the gathers go
# ---------------------------------------------------------------------------


def _flat(seq: nn.Sequential) -> list[nn.Module]:
    out = []
    for m in seq:
        out += _flat(m) if isinstance(m, nn.Sequential) else [m]
    return out


@pytest.mark.parametrize("groups", [2, 4, 8])
def test_vgg_uniform_flgc_keeps_one_gather_between_consecutive_flgc_layers(groups):
    """12 balanced FLGC layers in a row: FLGC k's output order and FLGC k+1's input order are
    two unrelated learned groupings, so one gather between them cannot be folded (11 in all);
    the first FLGC's input gather folds into the rows of the first (dense) conv. (G = 16 at
    width 0.25 makes the 16->16 conv02 depthwise, which gathers pass through: see below.)"""
    model = trained_like(get_space("vgg_flgc", WIDTH).uniform(groups), seed=groups)
    deployed = deploy(model)
    features = _flat(deployed.features)
    grouped = [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d) and m.groups > 1]
    gathers = [i for i, m in enumerate(features) if isinstance(m, ChannelGather)]
    assert len(grouped) == 12
    assert not [i for i in gathers if i < grouped[0]], "the first FLGC's input gather should fold into conv01"
    for a, b in zip(grouped, grouped[1:]):
        assert sum(a < i < b for i in gathers) == 1, f"not exactly one gather between layers {a} and {b}"
    assert count_gathers(deployed.classifier) == 0


def test_gathers_pass_through_an_flgc_that_is_depthwise():
    """FLGC with G = C = N (conv02 at width 0.25, G = 16) is a depthwise conv: each filter reads
    one channel, so a permutation commutes with it and the gathers on both sides merge."""
    model = trained_like(get_space("vgg_flgc", WIDTH).uniform(16), seed=16)
    deployed = deploy(model)
    features = _flat(deployed.features)
    grouped = [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d) and m.groups > 1]
    gathers = [i for i, m in enumerate(features) if isinstance(m, ChannelGather)]
    assert features[grouped[0]].groups == features[grouped[0]].in_channels == features[grouped[0]].out_channels
    assert not [i for i in gathers if i < grouped[1]]
    # One between each pair of conv03..conv13; the last output gather folds into the classifier.
    assert count_gathers(deployed.features) == 10
    x = batch()
    with torch.no_grad():
        assert_close(deployed(x), model(x))


@pytest.mark.parametrize("case", ["uniform", "last_layer_only"])
def test_vgg_last_flgc_output_gather_folds_into_the_classifier(case):
    space = get_space("vgg_flgc", WIDTH)
    if case == "uniform":
        arch, expected = space.uniform(4), 11
    else:
        arch, expected = Architecture("vgg16", WIDTH, 10, (LayerSpec.dense(),) * 11 + (LayerSpec.flgc(4),)), 0
    assert count_gathers(deploy(trained_like(arch))) == expected


@pytest.mark.parametrize("position", range(11))  # conv02 .. conv12 (conv13 is the xfail above)
def test_vgg_lone_flgc_between_dense_layers_folds_completely(position):
    specs = [LayerSpec.dense()] * 12
    specs[position] = LayerSpec.flgc(4)
    model = trained_like(Architecture("vgg16", WIDTH, 10, tuple(specs)), seed=position)
    deployed = deploy(model)
    assert count_gathers(deployed) == 0
    assert count_gathers(deploy(model, fold=False)) == 2
    x = batch()
    with torch.no_grad():
        assert_close(deployed(x), model(x))


def test_hetconv_dense_neighbours_absorb_gathers_that_split_form_cannot():
    """An FLGC between two HetConv layers: the dense form is one standard conv, so both gathers
    fold; the split form (a grouped conv inside ConvSum) leaves them explicit, never more."""
    specs = [LayerSpec.hetconv(4)] * 12
    specs[5] = LayerSpec.flgc(4)
    model = trained_like(Architecture("vgg16", WIDTH, 10, tuple(specs)))
    assert count_gathers(deploy(model, hetconv_form="dense")) == 0
    assert count_gathers(deploy(model, hetconv_form="split")) <= 2


# ---------------------------------------------------------------------------
# free (unbalanced) FLGC
# ---------------------------------------------------------------------------


def free_architectures() -> dict[str, Architecture]:
    vgg = [LayerSpec.dense()] * 12
    vgg[0] = LayerSpec.flgc(16, balanced=False)  # 16 -> 16 channels: empty groups are likely
    vgg[3] = LayerSpec.flgc(3, balanced=False)  # G that divides nothing
    vgg[4] = LayerSpec.flgc(4, balanced=False)  # free next to balanced
    vgg[5] = LayerSpec.flgc(4)
    vgg[10] = LayerSpec.hetconv(4)
    vgg[11] = LayerSpec.flgc(5, balanced=False)
    mbv2 = list(get_space("mbv2_flgc", WIDTH).uniform(2).layers)
    mbv2[1] = LayerSpec.flgc(3, balanced=False)  # an expansion conv
    mbv2[4] = LayerSpec.flgc(4, balanced=False)  # a projection conv feeding a residual sum
    return {
        "vgg": Architecture("vgg16", WIDTH, 10, tuple(vgg)),
        "mbv2": Architecture("mobilenetv2", WIDTH, 10, tuple(mbv2)),
    }


@pytest.mark.parametrize("name", ["vgg", "mbv2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_free_flgc_deploys_to_group_split_conv(name, dtype):
    arch = free_architectures()[name]
    model = trained_like(arch, seed=7, dtype=dtype)
    free = [m for m in model.modules() if isinstance(m, FLGConv2d) and not m.balanced]
    # The randomized logits really give unbalanced groups (the point of this test), and in VGG's
    # conv02 (G = 16 on 16 channels) a group whose filters have no input channel at all.
    counts = [
        (torch.bincount(m.input_groups(), minlength=m.groups), torch.bincount(m.output_groups(), minlength=m.groups))
        for m in free
    ]
    assert all(len(set(ins.tolist())) > 1 for ins, _ in counts)
    if name == "vgg":
        assert any(bool(((ins == 0) & (outs > 0)).any()) for ins, outs in counts)
    x = batch(dtype)
    with torch.no_grad():
        expected = model(x)
    for fold in (True, False):
        deployed = deploy(model, fold=fold)
        assert_standard_modules(deployed)
        assert sum(isinstance(m, GroupSplitConv) for m in deployed.modules()) == len(free)
        with torch.no_grad():
            assert_close(deployed(x), expected, rtol=RTOL if dtype == torch.float32 else RTOL_FLOAT64)


def test_free_flgc_deployed_model_scripts():
    model = trained_like(free_architectures()["vgg"], seed=7)
    deployed = deploy(model)
    scripted = script(deployed)
    x = batch()
    with torch.no_grad():
        assert_close(scripted(x), model(x))


# ---------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "case",
    ["vgg_flgc/uniform/4", "vgg_flgc/random/0", "mbv2_flgc/uniform/8", "mbv2_flgc/random/1", "vgg_hetconv/uniform/1"],
)
def test_deployed_parameters_equal_effective_parameters(case):
    """Balanced FLGC (and HetConv P = 1): the deployed network holds exactly count_params."""
    model = trained_like(architecture_of(case))
    for fold in (True, False):
        assert n_parameters(deploy(model, fold=fold)) == count_params(model)


@pytest.mark.parametrize("case", ["vgg_hetconv/uniform/4", "vgg_mixed/random/2"])
def test_hetconv_split_extra_parameters_are_exactly_the_baked_zero_blocks(case):
    """count_params is the effective count; HetConv's split form stores its 1x1 block diagonal
    as zeros (N*M/P per layer, search/evaluation/cost.py says so): that and nothing else is the difference.
    The dense form stores whole KxK kernels."""
    model = trained_like(architecture_of(case))
    deployed = deploy(model, hetconv_form="split")
    zero_blocks = 0
    for m in deployed.modules():
        if isinstance(m, ConvSum):
            zero_blocks += int((m.conv_b.weight == 0).sum())
    expected_zeros = sum(
        m.out_channels * m.in_channels // m.part for m in model.modules() if isinstance(m, HetConv2d) and m.part > 1
    )
    assert zero_blocks == expected_zeros
    assert n_parameters(deployed) - zero_blocks == count_params(model)
    assert n_parameters(deploy(model, fold=False)) == n_parameters(deployed)


# ---------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------


def test_onnx_export_of_a_deployed_model(tmp_path):
    # The [test] extra installs the [onnx] one: torch.onnx.export(dynamo=True) needs onnxscript.
    import onnx

    specs = [LayerSpec.hetconv(4)] * 12
    specs[3], specs[4], specs[6] = LayerSpec.flgc(2), LayerSpec.flgc(4), LayerSpec.flgc(2)
    model = trained_like(Architecture("vgg16", WIDTH, 10, tuple(specs)))
    deployed = deploy(model)
    assert count_gathers(deployed) > 0  # the export covers explicit gathers and ConvSum
    path = tmp_path / "deployed.onnx"
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(deployed, (batch(n=1),), str(path), dynamo=True)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = {node.op_type for node in proto.graph.node}
    assert "Conv" in ops and ops & {"Gemm", "MatMul"}, sorted(ops)


# ---------------------------------------------------------------------------
# the deploy command
# ---------------------------------------------------------------------------


def write_config(path: Path, arch: Architecture) -> Path:
    from search.reporting.export import CONFIG_FORMAT
    from search.settings import TrainingSettings

    config = {
        "format": CONFIG_FORMAT,
        "study": "test-deploy",
        "trial": 0,
        "space": "vgg_mixed",
        "dataset": "digits",
        "architecture": arch.to_json(),
        "metrics": {},
        "training": TrainingSettings().to_json(),
        "hyperparameters": {},
        "seed": 0,
    }
    path.write_text(json.dumps(config, indent=2))
    return path


def deploy_cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli(args, cwd=REPO, env=cli_env(PYTHONWARNINGS="ignore"))


def test_deploy_command_with_trained_weights(tmp_path):
    specs = [LayerSpec.hetconv(2)] * 12
    specs[2], specs[3], specs[9] = LayerSpec.flgc(4), LayerSpec.flgc(2), LayerSpec.flgc(8)
    arch = Architecture("vgg16", WIDTH, 10, tuple(specs))
    config = write_config(tmp_path / "trial_3.json", arch)
    model = trained_like(arch, seed=11)
    torch.save(model.state_dict(), tmp_path / "trial_3.pt")

    result = deploy_cli("deploy", str(config), "--onnx")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "trained weights" in out and "untrained" not in out
    ts_path = tmp_path / "trial_3.torchscript.pt"
    assert str(ts_path) in out and ts_path.exists()
    match = re.search(r"max \|trained - deployed\|[^:]*: ([0-9.eE+-]+)", out)
    assert match, out
    x = batch()
    with torch.no_grad():
        expected = model(x)
    assert float(match.group(1)) <= RTOL * expected.abs().max().item()
    # The saved TorchScript is the trained model's inference form.
    scripted = torch.jit.load(str(ts_path))
    with torch.no_grad():
        assert_close(scripted(x), expected)
    # (without the [onnx] extra, --onnx is a one-line error: tests/test_hostile_input.py)
    onnx_path = tmp_path / "trial_3.onnx"
    assert f"ONNX: {onnx_path}" in out, result.stderr
    import onnx

    onnx.checker.check_model(onnx.load(str(onnx_path)))


def test_deploy_command_rejects_an_illegal_architecture(tmp_path):
    arch = Architecture("vgg16", WIDTH, 10, (LayerSpec.hetconv(3),) * 12)  # 3 divides no layer
    config = write_config(tmp_path / "bad.json", arch)
    result = deploy_cli("deploy", str(config))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "part 3" in lines[0] and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.torchscript.pt"))


def test_deploy_at_a_batch_too_large_for_memory_is_one_line(tmp_path, monkeypatch):
    """``deploy --batch 4096`` of a wide model ran out of memory with a traceback."""
    import search.artifacts.deployment as deployment
    from search.errors import UserError

    config = write_config(tmp_path / "trial_0.json", Architecture("vgg16", WIDTH, 10, (LayerSpec.dense(),) * 12))

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 51539607552 bytes.")

    monkeypatch.setattr(deployment, "deploy", out_of_memory)
    with pytest.raises(UserError, match=r"^--batch 4096: .*can't allocate memory.*use a smaller --batch$"):
        deployment.export_deployed(config, batch=4096)
    assert not list(tmp_path.glob("*.torchscript.pt"))

    def a_bug(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(deployment, "deploy", a_bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):  # not every RuntimeError is the user's
        deployment.export_deployed(config, batch=1)
