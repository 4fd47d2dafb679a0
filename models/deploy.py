"""Deploy a trained model: only standard convolutions, permutations folded away.

``deploy(model)`` returns a copy in eval mode where every HetConv has its mask baked into
plain weights and every FLGC is a standard grouped convolution (or, with free groups, one
convolution per group). A balanced FLGC needs its input channels in group order and gives
its filters in group order; those two channel gathers are folded into neighbouring layers
wherever that is exact:

- a gather moves backward through per-channel layers (BatchNorm, activations, pooling,
  depthwise convolutions: their parameters are permuted instead) into the rows of the
  convolution that produced the tensor, if that is a standard convolution;
- otherwise it moves forward into the input columns of the convolution that consumes the
  tensor, or merges with the next gather (two gathers of the same tensor become one);
- what cannot be folded (between two grouped convolutions with different learned groupings,
  or where a block's output must keep its channel order for a residual sum) stays as one
  explicit gather, moved to the smallest tensor of its run of per-channel layers.

The deployed model gives the same outputs as the trained one in eval mode (to float
tolerance) and exports to TorchScript.
"""

from __future__ import annotations

import copy
from typing import TypeGuard

import torch
from torch import nn

from layers import ChannelGather, FLGConv2d, GroupSplitConv, HetConv2d
from layers.timing import median_ms

__all__ = ["count_gathers", "deploy"]

_PARAMETER_FREE = (nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity, nn.Dropout)
_SHRINKING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def _is_depthwise(m: nn.Module) -> TypeGuard[nn.Conv2d]:
    return isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels and m.groups > 1


def _per_channel(m: nn.Module) -> bool:
    return isinstance(m, (*_PARAMETER_FREE, nn.BatchNorm2d)) or _is_depthwise(m)


def _dense(m: nn.Module) -> TypeGuard[nn.Conv2d]:
    return isinstance(m, nn.Conv2d) and m.groups == 1


@torch.no_grad()
def _permute_channels(m: nn.Module, index: torch.Tensor) -> None:
    """Make ``m`` work on channels reordered by ``index`` (new channel j = old index[j])."""
    if isinstance(m, nn.BatchNorm2d):
        for name in ("weight", "bias", "running_mean", "running_var"):
            tensor = getattr(m, name)
            if tensor is not None:
                tensor.copy_(tensor[index])
    elif _is_depthwise(m):
        m.weight.copy_(m.weight[index])
        if m.bias is not None:
            m.bias.copy_(m.bias[index])


@torch.no_grad()
def _fold_into_rows(conv: nn.Conv2d, index: torch.Tensor) -> None:
    conv.weight.copy_(conv.weight[index])
    if conv.bias is not None:
        conv.bias.copy_(conv.bias[index])


@torch.no_grad()
def _fold_into_columns(conv: nn.Conv2d, inverse: torch.Tensor) -> None:
    conv.weight.copy_(conv.weight[:, inverse])


def _fold_one(layers: list[nn.Module], i: int) -> bool:
    """Fold the gather at ``layers[i]`` backward or forward; True if it was removed."""
    gather = layers[i]
    assert isinstance(gather, ChannelGather)
    index = gather.index
    if torch.equal(index, torch.arange(index.numel(), device=index.device)):
        del layers[i]
        return True
    if not torch.equal(torch.sort(index).values, torch.arange(index.numel(), device=index.device)):
        return False  # a subset of the channels (free FLGC branch), not a reordering
    j = i - 1
    while j >= 0 and _per_channel(layers[j]):
        j -= 1
    producer = layers[j] if j >= 0 else None
    if producer is not None and (_dense(producer) or isinstance(producer, ChannelGather)):
        for m in layers[j + 1 : i]:
            _permute_channels(m, index)
        if isinstance(producer, ChannelGather):
            producer.index = producer.index[index]
        else:
            _fold_into_rows(producer, index)
        del layers[i]
        return True
    k = i + 1
    while k < len(layers) and _per_channel(layers[k]):
        k += 1
    consumer = layers[k] if k < len(layers) else None
    if consumer is not None and (_dense(consumer) or isinstance(consumer, ChannelGather)):
        inverse = torch.argsort(index)
        for m in layers[i + 1 : k]:
            _permute_channels(m, inverse)
        if isinstance(consumer, ChannelGather):
            consumer.index = index[consumer.index]
        else:
            _fold_into_columns(consumer, inverse)
        del layers[i]
        return True
    return False


def _sink(layers: list[nn.Module], i: int) -> None:
    """Move an unfoldable gather past per-channel layers to after the last pooling of the run
    (a smaller tensor to copy)."""
    k, last_pool = i + 1, None
    while k < len(layers) and _per_channel(layers[k]):
        if isinstance(layers[k], _SHRINKING):
            last_pool = k
        k += 1
    if last_pool is None:
        return
    gather = layers[i]
    assert isinstance(gather, ChannelGather)
    inverse = torch.argsort(gather.index)
    for m in layers[i + 1 : last_pool + 1]:
        _permute_channels(m, inverse)
    layers.insert(last_pool + 1, gather)
    del layers[i]


def _fold_sequential(seq: nn.Sequential) -> nn.Sequential:
    layers: list[nn.Module] = []
    for m in seq:  # deployed FLGC layers are Sequentials of their own: flatten them in
        layers.extend(m if isinstance(m, nn.Sequential) and any(isinstance(x, ChannelGather) for x in m) else [m])
    folded = True
    while folded:
        folded = any(_fold_one(layers, i) for i, m in enumerate(layers) if isinstance(m, ChannelGather))
    for i in [i for i, m in enumerate(layers) if isinstance(m, ChannelGather)][::-1]:
        _sink(layers, i)
    return nn.Sequential(*layers)


def _median_ms(layer: nn.Module, x: torch.Tensor, repeats: int = 7) -> float:
    with torch.inference_mode():
        return median_ms(lambda: layer(x), x.device, warmup=2, repeats=repeats)


def _inputs_seen(model: nn.Module, example: torch.Tensor, wanted) -> list[tuple[str, nn.Module, torch.Size]]:
    """(name, module, input shape) of every module for which ``wanted(module)`` holds, in the
    order they run when ``model`` runs ``example`` (each module once)."""
    seen: dict[str, tuple[str, nn.Module, torch.Size]] = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, (name, m, args[0].shape)) and None)
        for name, m in model.named_modules()
        if wanted(m)
    ]
    try:
        with torch.inference_mode():
            model.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    return list(seen.values())


def _input_shapes(model: nn.Module, example: torch.Tensor, kind: type) -> dict[str, torch.Size]:
    """Input shape of every ``kind`` layer (by qualified name) when ``model`` runs ``example``."""
    return {name: shape for name, _, shape in _inputs_seen(model, example, lambda m: isinstance(m, kind))}


def _timing_input(shape: torch.Size | tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Random input of ``shape`` on ``like``'s device and dtype, channels_last."""
    return torch.randn(shape, device=like.device, dtype=like.dtype).contiguous(memory_format=torch.channels_last)


def _fastest_hetconv_forms(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """Time both exact forms of every HetConv at the input shape it sees and keep the faster:
    the split form saves FLOPs, but on some devices a grouped convolution at a large feature
    map runs slower than the dense one it replaces."""
    layers = dict(model.named_modules())
    forms = {}
    for name, shape in _input_shapes(model, example, HetConv2d).items():
        x = _timing_input(shape, example)
        timed = {
            form: _median_ms(layers[name].deploy(form).to(memory_format=torch.channels_last), x)
            for form in ("split", "dense")
        }
        forms[name] = min(timed, key=timed.__getitem__)
    return forms


def _remaining_gathers(model: nn.Module, example: torch.Tensor) -> list[tuple[ChannelGather, torch.Size]]:
    """The gathers folding left (not those inside a per-group split) with their input shape
    (without the batch dimension), found by running one sample."""
    inside_split = {id(m) for split in model.modules() if isinstance(split, GroupSplitConv) for m in split.modules()}
    left = _inputs_seen(model, example[:1], lambda m: isinstance(m, ChannelGather) and id(m) not in inside_split)
    return [(gather, shape[1:]) for _, gather, shape in left if isinstance(gather, ChannelGather)]


class _GatherTimer:
    """Median time of the faster form of a channel gather (index copy or 1x1 selection conv)
    per input shape, measured once per shape at the example's batch, device and layout."""

    def __init__(self, example: torch.Tensor) -> None:
        self.example = example
        self.timed: dict[torch.Size, tuple[float, bool]] = {}

    def __call__(self, shape: torch.Size) -> tuple[float, bool]:
        """(milliseconds, whether the conv form is the faster) for inputs of ``shape``."""
        if shape not in self.timed:
            x = _timing_input((self.example.shape[0], *shape), self.example)
            gather = ChannelGather(torch.randperm(shape[0], device=x.device))
            index_ms = _median_ms(gather, x)
            gather.run_as_conv(True, shape[0], x.dtype)
            conv_ms = _median_ms(gather, x)
            self.timed[shape] = (min(index_ms, conv_ms), conv_ms < index_ms)
        return self.timed[shape]


def _bare_conv(layer: FLGConv2d, form: str) -> nn.Module:
    """What an FLGC form runs besides gathers that folding may remove (those are costed where
    they remain): the grouped convolution alone, the per-group split, or the dense conv."""
    deployed = layer.deploy(form)
    return deployed[1] if isinstance(deployed, nn.Sequential) else deployed


def _fastest_flgc_forms(
    model: nn.Module, example: torch.Tensor, hetconv_forms: dict[str, str] | str, gather_timer: _GatherTimer
) -> dict[str, str]:
    """Per FLGC layer, ``grouped`` or ``dense``: whichever makes the folded model faster.

    A grouped FLGC layer saves FLOPs but may leave channel gathers that cannot be folded
    (consecutive layers with different learned groupings, residual sums); a dense-form layer
    runs dense FLOPs but needs no gather and absorbs its neighbours'. The deployed model's
    time is modelled as the sum of its FLGC layers' times (each form timed at its input shape)
    plus the time of every gather left after folding (timed at its tensor's shape, in the
    faster of its two forms, which the deployed gather then uses); layers are
    switched to dense one at a time, in order, where that lowers the modelled time, then each
    switched layer is tried grouped again (a local search, not an exhaustive one).
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, FLGConv2d)}
    if not layers:
        return {}
    own = {}
    for name, shape in _input_shapes(model, example, FLGConv2d).items():
        x = _timing_input(shape, example)
        own[name] = {
            form: _median_ms(_bare_conv(layers[name], form).to(memory_format=torch.channels_last), x)
            for form in ("grouped", "dense")
        }

    def modelled_ms(forms: dict[str, str]) -> tuple[float, float]:
        trial = copy.deepcopy(model)
        _convert(trial, hetconv_forms, forms)
        _fold_model(trial)
        gathers = sum(gather_timer(shape)[0] for _, shape in _remaining_gathers(trial, example))
        return sum(own[name][form] for name, form in forms.items()) + gathers, gathers

    forms = {name: "grouped" for name in own}
    best, gathers = modelled_ms(forms)
    for name in own:
        if own[name]["dense"] - own[name]["grouped"] >= gathers:
            continue  # more than every remaining gather could save
        candidate = {**forms, name: "dense"}
        total, candidate_gathers = modelled_ms(candidate)
        if total < best:
            forms, best, gathers = candidate, total, candidate_gathers
    # A later switch can make an earlier one unnecessary (a gather between two layers goes
    # once either is dense): try each dense layer grouped again.
    for name in [name for name, form in forms.items() if form == "dense"]:
        candidate = {**forms, name: "grouped"}
        total, _ = modelled_ms(candidate)
        if total < best:
            forms, best = candidate, total
    return forms


def _form(forms: dict[str, str] | str, name: str, default: str) -> str:
    return forms if isinstance(forms, str) else forms.get(name, default)


def _convert(
    module: nn.Module, hetconv_forms: dict[str, str] | str, flgc_forms: dict[str, str] | str, prefix: str = ""
) -> None:
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, HetConv2d):
            setattr(module, name, child.deploy(_form(hetconv_forms, path, "split")))
        elif isinstance(child, FLGConv2d):
            setattr(module, name, child.deploy(_form(flgc_forms, path, "grouped")))
        else:
            _convert(child, hetconv_forms, flgc_forms, f"{path}.")


def _fold(module: nn.Module) -> None:
    if isinstance(module, GroupSplitConv):  # its branches read channel subsets: nothing to fold
        return
    for name, child in module.named_children():
        _fold(child)
        if isinstance(child, nn.Sequential):
            setattr(module, name, _fold_sequential(child))


def _fold_model(model: nn.Module) -> None:
    _fold(model)
    for module in model.modules():
        _fold_into_head(module)


@torch.no_grad()
def _fold_into_head(module: nn.Module) -> None:
    """A gather left at the end of ``features`` folds into the classifier's first Linear when
    the feature map is 1x1 there (VGG on CIFAR): flattening keeps the channel order."""
    features, classifier = getattr(module, "features", None), getattr(module, "classifier", None)
    if not (isinstance(features, nn.Sequential) and len(features) and isinstance(features[-1], ChannelGather)):
        return
    last = features[-1]
    linear = classifier[0] if isinstance(classifier, nn.Sequential) and len(classifier) else classifier
    if isinstance(linear, nn.Linear) and linear.in_features == last.index.numel():
        linear.weight.copy_(linear.weight[:, torch.argsort(last.index)])
        module.features = nn.Sequential(*list(features)[:-1])


def deploy(
    model: nn.Module,
    hetconv_form: str = "split",
    fold: bool = True,
    example_input: torch.Tensor | None = None,
    flgc_form: str = "grouped",
) -> nn.Module:
    """The inference form of ``model`` (a copy, in eval mode).

    ``hetconv_form`` is ``split`` (grouped KxK + 1x1), ``dense`` (one KxK conv) or ``auto``
    (per layer the faster of the two, timed at the shape the layer sees); ``flgc_form`` is
    ``grouped`` (a grouped conv, its permutations folded where exact), ``dense`` (one conv
    with zeros outside the groups, no gathers) or ``auto`` (per layer, whichever makes the
    whole model faster once the gathers that folding cannot remove are counted). ``auto``
    times on ``example_input``'s device and shape. ``fold=False`` keeps every gather (for
    measuring what folding saves). Every form is exact.

    Example:
        >>> from models import Architecture, LayerSpec, build_model
        >>> net = build_model(Architecture("vgg16", 0.25, 10, (LayerSpec.flgc(4),) * 12)).eval()
        >>> x = torch.randn(2, 3, 32, 32)
        >>> bool(torch.allclose(net(x), deploy(net)(x), atol=1e-4))
        True
    """
    for what, form, legal in (
        ("hetconv_form", hetconv_form, ("split", "dense", "auto")),
        ("flgc_form", flgc_form, ("grouped", "dense", "auto")),
    ):
        if form not in legal:
            raise ValueError(f"unknown {what} {form!r}; use {', '.join(legal)}")
        if form == "auto" and example_input is None:
            raise ValueError(f"{what}='auto' needs an example_input to time the forms on")
    deployed = copy.deepcopy(model).eval()
    hetconv_forms: dict[str, str] | str = hetconv_form
    flgc_forms: dict[str, str] | str = flgc_form
    gather_timer: _GatherTimer | None = None
    if example_input is not None:  # given wherever a form is auto (checked above)
        if hetconv_form == "auto":
            hetconv_forms = _fastest_hetconv_forms(deployed, example_input)
        if flgc_form == "auto":
            gather_timer = _GatherTimer(example_input)
            # without folding every gather stays, and auto would only ever measure that
            flgc_forms = (
                _fastest_flgc_forms(deployed, example_input, hetconv_forms, gather_timer) if fold else "grouped"
            )
    _convert(deployed, hetconv_forms, flgc_forms)
    if fold:
        _fold_model(deployed)
    if gather_timer is not None and example_input is not None:  # the gathers that remain run in their faster form
        for gather, shape in _remaining_gathers(deployed, example_input):
            gather.run_as_conv(gather_timer(shape)[1], shape[0], example_input.dtype)
    return deployed.eval()  # after conversion: the new modules are in eval mode too


def count_gathers(model: nn.Module) -> int:
    """Explicit channel gathers left in a deployed model (what folding could not remove)."""
    return sum(isinstance(m, ChannelGather) for m in model.modules())
