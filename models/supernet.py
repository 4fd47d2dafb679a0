"""A model whose searchable convolutions share weights across their choices.

The model-level half of one-shot NAS by weight sharing (Once-for-All, Cai et al., arXiv
1908.09791; BigNAS, Yu et al., arXiv 2003.11142): :class:`WeightSharingModel` is the dense
model with every searchable convolution replaced by a :class:`layers.SuperConv2d` holding that
layer's choices, so that every architecture over those choices is one of its sub-networks.
Activating an architecture selects it; :meth:`WeightSharingModel.extract` builds it as a
stand-alone model with the inherited weights. How it is trained and candidates are scored is
the search's (``search.strategies.supernet``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from layers import SuperConv2d

from .architecture import Architecture, LayerSlot, LayerSpec
from .registry import build_model, mark_searchable, searchable_layers

__all__ = ["WeightSharingModel"]


class WeightSharingModel(nn.Module):
    """``build_model(dense)`` with searchable conv ``i`` replaced by a :class:`SuperConv2d`
    over ``choices[i]`` at ``slots[i]``, initialised with the dense conv's weights; everything
    else (stem, BatchNorm, depthwise, head) is shared as is. The first choice of every layer
    is active until :meth:`activate`. ``error`` is the exception raised for an architecture
    that is not a sub-network (a search space passes its own).

    Example:
        >>> from models import get_model_family
        >>> dense = Architecture("vgg16", 0.25, 10, (LayerSpec.dense(),) * 12)
        >>> slots = get_model_family("vgg16").slots(0.25)
        >>> net = WeightSharingModel(dense, slots, [(LayerSpec.dense(), LayerSpec.hetconv(2))] * 12)
        >>> net.activate(Architecture("vgg16", 0.25, 10, (LayerSpec.hetconv(2),) * 12))
        >>> net(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        dense: Architecture,
        slots: Sequence[LayerSlot],
        choices: Sequence[Sequence[LayerSpec]],
        *,
        error: type[Exception] = ValueError,
    ) -> None:
        super().__init__()
        self.dense, self.error = dense, error
        self.choices = tuple(tuple(options) for options in choices)
        self.model = build_model(dense)
        found = searchable_layers(self.model)
        if len(found) != len(slots):
            raise ValueError(f"{dense.model} has {len(found)} searchable convs, the space {len(slots)} slots")
        layers = []
        for (parent, attr), slot, options in zip(found, slots, self.choices):
            conv = getattr(parent, attr)
            if not isinstance(conv, nn.Conv2d):
                raise ValueError(f"searchable layer {slot.name} of the dense {dense.model} is not a Conv2d")
            shape = (conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0])
            if shape != (slot.in_channels, slot.out_channels, slot.kernel_size, slot.stride):
                raise ValueError(f"slot {slot.name} does not match searchable conv {shape} (slot order?)")
            layer = SuperConv2d(slot, options, error=error)
            with torch.no_grad():
                layer.weight.copy_(conv.weight)
            setattr(parent, attr, mark_searchable(layer))
            layers.append(layer)
        self.layers: tuple[SuperConv2d, ...] = tuple(layers)  # plain attribute; registered via self.model
        self.active = self._architecture([options[0] for options in self.choices])

    def _architecture(self, specs: Sequence[LayerSpec]) -> Architecture:
        return Architecture(self.dense.model, self.dense.width, self.dense.num_classes, tuple(specs))

    def holds(self, arch: Architecture) -> bool:
        """Whether ``arch`` is a sub-network: same model and width, every choice one of its layer's."""
        return (
            arch.model == self.dense.model
            and arch.width == self.dense.width
            and len(arch.layers) == len(self.choices)
            and all(spec in options for spec, options in zip(arch.layers, self.choices))
        )

    def check(self, arch: Architecture) -> None:
        """Raise ``error`` unless ``arch`` is a sub-network."""
        if not self.holds(arch):
            raise self.error(f"architecture {arch.summary()!r} is not a sub-network of this supernet")

    def activate(self, arch: Architecture) -> None:
        """From now on compute sub-network ``arch``."""
        self.check(arch)
        for layer, spec in zip(self.layers, arch.layers):
            layer.activate(spec)
        self.active = arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def sample(self, generator: torch.Generator) -> Architecture:
        """A uniform random choice per layer (``generator`` on the CPU)."""
        return self._architecture(
            [options[int(torch.randint(len(options), (), generator=generator))] for options in self.choices]
        )

    @torch.no_grad()
    def extract(self, arch: Architecture) -> nn.Module:
        """``build_model(arch)`` with the inherited weights: the searchable layers get
        :meth:`SuperConv2d.standalone` weights, every other module the supernet's parameters
        and buffers (BatchNorm statistics included). Its output equals the supernet's with
        ``arch`` active. The global RNG state is left untouched."""
        self.check(arch)
        reference = self.layers[0].weight
        with torch.random.fork_rng(devices=[]):
            model = build_model(arch).to(reference.device, reference.dtype)
        shared = _without_searchable(self.model)
        target = _without_searchable(model)
        if shared.keys() != target.keys():
            raise RuntimeError(f"supernet and {arch.model} differ outside the searchable layers")
        missing, unexpected = model.load_state_dict(shared, strict=False)
        assert not unexpected and len(missing) + len(shared) == len(model.state_dict())
        for (parent, attr), layer, spec in zip(searchable_layers(model), self.layers, arch.layers):
            setattr(parent, attr, mark_searchable(layer.standalone(spec)))
        return model.train(self.training)


def _without_searchable(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict entries that do not belong to a searchable layer."""
    searchable = {id(getattr(parent, attr)) for parent, attr in searchable_layers(model)}
    prefixes = tuple(name + "." for name, module in model.named_modules() if id(module) in searchable)
    return {key: value for key, value in model.state_dict().items() if not key.startswith(prefixes)}
