"""The built-in spaces. Each keeps, per layer, only the values that divide its channel counts."""

from __future__ import annotations

from collections.abc import Callable

from models import LayerSlot, LayerSpec

__all__ = ["BUILTIN_SPACES", "BuiltinSpace"]

POWERS_OF_TWO = (1, 2, 4, 8, 16, 32, 64)


def _divides(value: int, slot: LayerSlot) -> bool:
    return slot.in_channels % value == 0 and slot.out_channels % value == 0


def hetconv_parts(slot: LayerSlot, values: tuple[int, ...] = POWERS_OF_TWO) -> list[LayerSpec]:
    return [LayerSpec.hetconv(p) for p in values if _divides(p, slot)]


def flgc_groups(slot: LayerSlot, values: tuple[int, ...] = POWERS_OF_TWO[:6]) -> list[LayerSpec]:
    return [LayerSpec.flgc(g) for g in values if _divides(g, slot)]


def mixed(slot: LayerSlot) -> list[LayerSpec]:
    # P = 1 and G = 1 are the dense conv: listed once, as dense.
    return [LayerSpec.dense()] + hetconv_parts(slot, POWERS_OF_TWO[1:]) + flgc_groups(slot, POWERS_OF_TWO[1:6])


def flgc_paper(slot: LayerSlot) -> LayerSpec:
    """The FLGC paper's MobileNetV2 (Wang et al., "Fully Learnable Group Convolution for
    Acceleration of Deep Neural Networks", CVPR 2019; its reference code's CIFAR-10 model):
    FLGC with 8 groups on the projection convs, the expansion convs dense (G = 1, the
    dense-equivalent choice of an FLGC space)."""
    return LayerSpec.flgc(8) if slot.name.endswith("_project") else LayerSpec.flgc(1)


class BuiltinSpace:
    """Recipe of a built-in space: model, layer type a bare number means, per-slot choices,
    and named baselines (a published model as one choice per slot)."""

    def __init__(self, description: str, model: str, default_type: str, choose, baselines=None) -> None:
        self.description = description
        self.model = model
        self.default_type = default_type
        self.choose = choose
        self.baselines: dict[str, Callable[[LayerSlot], LayerSpec]] = dict(baselines or {})


BUILTIN_SPACES: dict[str, BuiltinSpace] = {
    "vgg_hetconv": BuiltinSpace(
        "VGG-16, HetConv part P in 1,2,4,...,64 per searchable conv", "vgg16", "hetconv", hetconv_parts
    ),
    "vgg_flgc": BuiltinSpace("VGG-16, FLGC groups G in 1,2,4,...,32 per searchable conv", "vgg16", "flgc", flgc_groups),
    "mbv2_flgc": BuiltinSpace(
        "MobileNetV2, FLGC groups G in 1,2,4,...,32 per pointwise conv",
        "mobilenetv2",
        "flgc",
        flgc_groups,
        baselines={"flgc-paper": flgc_paper},
    ),
    "vgg_mixed": BuiltinSpace(
        "VGG-16, per conv: dense, HetConv (P 2..64) or FLGC (G 2..32)", "vgg16", "hetconv", mixed
    ),
}
