"""Model families by name: each knows its searchable layers at a width and how to build itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from layers import share_assignments

from .architecture import Architecture, ArchitectureError, LayerSlot, check_hetconv_nesting

__all__ = [
    "ModelFamily",
    "build_model",
    "get_model_family",
    "mark_searchable",
    "model_names",
    "register_model",
    "searchable_layers",
    "validate",
]

_MARK = "is_searchable_layer"


def mark_searchable(module: nn.Module) -> nn.Module:
    """Tag a searchable convolution as models build it (in slot order)."""
    setattr(module, _MARK, True)
    return module


def searchable_layers(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute name) of every searchable convolution of a built model, in slot
    order, so that tools such as the one-shot supernet can swap them without knowing the
    model family."""
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if getattr(child, _MARK, False):
                found.append((parent, name))
    return found


@dataclass(frozen=True)
class ModelFamily:
    name: str
    description: str
    slots: Callable[[float], list[LayerSlot]]  # searchable layers at a width multiplier
    build: Callable[[Architecture], nn.Module]


_REGISTRY: dict[str, ModelFamily] = {}


def register_model(family: ModelFamily) -> ModelFamily:
    _REGISTRY[family.name] = family
    return family


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def get_model_family(name: str) -> ModelFamily:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ArchitectureError(f"unknown model {name!r}; known models: {', '.join(model_names())}") from None


def validate(arch: Architecture) -> list[LayerSlot]:
    """Check ``arch`` against its model's searchable layers; return the slots.

    Raises :class:`ArchitectureError` naming the layer and the legal values."""
    family = get_model_family(arch.model)
    if not 0 < arch.width <= 4:
        raise ArchitectureError(f"width {arch.width} is out of range; use a multiplier in (0, 4]")
    if arch.num_classes < 2:
        raise ArchitectureError(f"num_classes must be at least 2, got {arch.num_classes}")
    slots = family.slots(arch.width)
    if len(arch.layers) != len(slots):
        raise ArchitectureError(
            f"{arch.model} has {len(slots)} searchable layers but the architecture gives {len(arch.layers)} layer specs"
        )
    for spec, slot in zip(arch.layers, slots):
        spec.check(slot)
    check_hetconv_nesting(arch.layers)
    return slots


def build_model(arch: Architecture) -> nn.Module:
    """Validate ``arch`` and build its model (the one factory every caller uses). The FLGC
    layers of the model share one assignment batch (``layers.share_assignments``): a training
    step solves all their assignments at once."""
    validate(arch)
    model = get_model_family(arch.model).build(arch)
    share_assignments(model)
    return model
