"""CIFAR model families built from an :class:`Architecture` by one factory, :func:`build_model`."""

from . import mobilenetv2, vgg  # noqa: F401  (registers the families)
from .architecture import Architecture, ArchitectureError, LayerSlot, LayerSpec, scaled_channels
from .deploy import count_gathers, deploy
from .registry import (
    ModelFamily,
    build_model,
    get_model_family,
    mark_searchable,
    model_names,
    register_model,
    searchable_layers,
    validate,
)
from .supernet import WeightSharingModel

__all__ = [
    "Architecture",
    "ArchitectureError",
    "LayerSlot",
    "LayerSpec",
    "ModelFamily",
    "build_model",
    "count_gathers",
    "deploy",
    "get_model_family",
    "mark_searchable",
    "model_names",
    "register_model",
    "scaled_channels",
    "searchable_layers",
    "validate",
    "WeightSharingModel",
]
