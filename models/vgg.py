"""VGG-16 for CIFAR (the HetConv paper's setup).

Configuration 64,64,M,128,128,M,256,256,256,M,512,512,512,M,512,512,512,M; every conv is
3x3, padding 1, no bias, followed by BatchNorm and ReLU; 2x2 max-pool at M; classifier
Linear(512, 512), BatchNorm1d, ReLU, Linear(512, classes). The first conv (3 input channels)
stays standard; the other 12 are searchable.
"""

from __future__ import annotations

import torch
from torch import nn

from layers import create_conv2d

from .architecture import Architecture, LayerSlot, scaled_channels
from .registry import ModelFamily, mark_searchable, register_model

__all__ = ["VGG16", "vgg16_slots"]

# output channels of each 3x3 conv; "M" is a 2x2 max-pool
CONFIG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _conv_shapes(width: float) -> list[tuple[int, int, int]]:
    """(in_channels, out_channels, input_size) of the 13 convs."""
    shapes, channels, size = [], 3, 32
    for item in CONFIG:
        if isinstance(item, str):  # "M"
            size //= 2
        else:
            out = scaled_channels(item, width)
            shapes.append((channels, out, size))
            channels = out
    return shapes


def vgg16_slots(width: float = 1.0) -> list[LayerSlot]:
    return [
        LayerSlot(f"conv{i:02d}", cin, cout, 3, 1, size)
        for i, (cin, cout, size) in enumerate(_conv_shapes(width)[1:], start=2)
    ]


class VGG16(nn.Module):
    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        specs = iter([None, *arch.layers])  # the first conv is always dense
        layers: list[nn.Module] = []
        shapes = iter(_conv_shapes(arch.width))
        for item in CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            cin, cout, _ = next(shapes)
            spec = next(specs)
            conv = (
                create_conv2d(cin, cout, 3, 1, **spec.conv_kwargs())
                if spec
                else nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
            )
            layers += [mark_searchable(conv) if spec else conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        hidden = scaled_channels(512, arch.width)
        self.classifier = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, arch.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


register_model(ModelFamily("vgg16", "VGG-16 for CIFAR, 12 searchable 3x3 convs", vgg16_slots, VGG16))
