"""MobileNetV2 for CIFAR (as used by the FLGC reference).

Stem 3x3 conv 3->32, stride 1; inverted-residual settings (t, c, n, s) below; ReLU6; the t=1
block has no expansion conv; a residual add when stride is 1 and in == out, a 1x1 conv + BN
shortcut when stride is 1 and in != out; last 1x1 conv 320->1280, global average pool,
Linear(1280, classes). Searchable: the pointwise convs of the blocks (expansion and
projection). The stem, depthwise, shortcut and last convs stay standard.
"""

from __future__ import annotations

import torch
from torch import nn

from layers import create_conv2d

from .architecture import Architecture, LayerSlot, LayerSpec, scaled_channels
from .registry import ModelFamily, mark_searchable, register_model

__all__ = ["MobileNetV2", "mobilenetv2_slots"]

SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _block_shapes(width: float) -> list[tuple[int, int, int, int, int]]:
    """(in_channels, out_channels, expansion, stride, input_size) of the 17 blocks."""
    shapes, channels, size = [], scaled_channels(32, width), 32
    for expansion, c, n, s in SETTINGS:
        out = scaled_channels(c, width)
        for i in range(n):
            stride = s if i == 0 else 1
            shapes.append((channels, out, expansion, stride, size))
            channels, size = out, size // stride
    return shapes


def mobilenetv2_slots(width: float = 1.0) -> list[LayerSlot]:
    slots = []
    for b, (cin, cout, expansion, stride, size) in enumerate(_block_shapes(width)):
        hidden = cin * expansion
        if expansion != 1:
            slots.append(LayerSlot(f"b{b:02d}_expand", cin, hidden, 1, 1, size))
        slots.append(LayerSlot(f"b{b:02d}_project", hidden, cout, 1, 1, size // stride))
    return slots


def _conv_bn(conv: nn.Module, channels: int, act: bool) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels)] + ([nn.ReLU6(inplace=True)] if act else [])


class InvertedResidual(nn.Module):
    def __init__(
        self, cin: int, cout: int, expansion: int, stride: int, expand: LayerSpec | None, project: LayerSpec
    ) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expand is not None:
            layers += _conv_bn(mark_searchable(create_conv2d(cin, hidden, 1, **expand.conv_kwargs())), hidden, act=True)
        depthwise = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        layers += _conv_bn(depthwise, hidden, act=True)
        layers += _conv_bn(mark_searchable(create_conv2d(hidden, cout, 1, **project.conv_kwargs())), cout, act=False)
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1
        self.shortcut: nn.Module = nn.Identity()
        if stride == 1 and cin != cout:
            self.shortcut = nn.Sequential(*_conv_bn(nn.Conv2d(cin, cout, 1, bias=False), cout, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out + self.shortcut(x) if self.residual else out


class MobileNetV2(nn.Module):
    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        stem = scaled_channels(32, arch.width)
        last = scaled_channels(1280, arch.width)
        specs = iter(arch.layers)
        blocks = []
        for cin, cout, expansion, stride, _ in _block_shapes(arch.width):
            expand = next(specs) if expansion != 1 else None
            blocks.append(InvertedResidual(cin, cout, expansion, stride, expand, next(specs)))
        top = scaled_channels(320, arch.width)
        self.features = nn.Sequential(
            *_conv_bn(nn.Conv2d(3, stem, 3, 1, 1, bias=False), stem, act=True),
            *blocks,
            *_conv_bn(nn.Conv2d(top, last, 1, bias=False), last, act=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, arch.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


register_model(
    ModelFamily("mobilenetv2", "MobileNetV2 for CIFAR, searchable pointwise convs", mobilenetv2_slots, MobileNetV2)
)
