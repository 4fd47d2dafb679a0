"""One factory that picks the convolution implementation, so models never branch on layer types."""

from __future__ import annotations

from torch import nn

from .flgc import FLGConv2d
from .hetconv import HetConv2d

__all__ = ["LAYER_TYPES", "create_conv2d"]

LAYER_TYPES = ("dense", "hetconv", "flgc")


def create_conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    *,
    layer_type: str = "dense",
    part: int = 1,
    groups: int = 1,
    balanced: bool = True,
    bias: bool = False,
) -> nn.Module:
    """Build a KxK convolution with "same" padding of the given type.

    ``dense`` is ``nn.Conv2d``; ``hetconv`` is :class:`HetConv2d` with ``part``; ``flgc`` is
    :class:`FLGConv2d` with ``groups`` (and ``balanced``).

    Example:
        >>> create_conv2d(64, 64, 3, layer_type="hetconv", part=4)
        HetConv2d(64, 64, part=4, kernel_size=3, stride=1)
    """
    padding = kernel_size // 2
    if layer_type == "dense":
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
    if layer_type == "hetconv":
        return HetConv2d(in_channels, out_channels, part, kernel_size, stride, padding, bias=bias)
    if layer_type == "flgc":
        return FLGConv2d(in_channels, out_channels, groups, kernel_size, stride, padding, bias=bias, balanced=balanced)
    raise ValueError(f"unknown layer type {layer_type!r}; expected one of {', '.join(LAYER_TYPES)}")
