"""The plain, JSON-able description of a candidate network.

An :class:`Architecture` names a model family, its width and number of classes, and holds
one :class:`LayerSpec` per searchable layer. It is what spaces sample, what the storage
records and what exported configs hold; :func:`models.build_model` turns it into a module.
It round-trips through JSON exactly.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Architecture", "ArchitectureError", "LayerSlot", "LayerSpec", "check_hetconv_nesting", "scaled_channels"]


class ArchitectureError(ValueError):
    """An illegal architecture; the message names the layer and the legal values."""


def scaled_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Channels at a width multiplier, rounded to a multiple of ``divisor`` (as MobileNet does),
    so that common group counts and parts stay legal at every width. Exact at width 1.0."""
    value = channels * width
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:  # never round down by more than 10 %
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class LayerSlot:
    """A searchable convolution of a model: its shape, which is what decides legal choices and cost."""

    name: str
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    input_size: int  # spatial side of the input feature map

    @property
    def output_size(self) -> int:
        return math.ceil(self.input_size / self.stride)


@dataclass(frozen=True)
class LayerSpec:
    """The choice made for one searchable layer: ``dense``, ``hetconv`` with ``part``, or
    ``flgc`` with ``groups`` (balanced by default)."""

    type: str = "dense"
    part: int | None = None
    groups: int | None = None
    balanced: bool = True

    @staticmethod
    def dense() -> LayerSpec:
        return LayerSpec("dense")

    @staticmethod
    def hetconv(part: int) -> LayerSpec:
        return LayerSpec("hetconv", part=int(part))

    @staticmethod
    def flgc(groups: int, balanced: bool = True) -> LayerSpec:
        return LayerSpec("flgc", groups=int(groups), balanced=bool(balanced))

    @property
    def label(self) -> str:
        """Short text form, also used as the categorical value in a study: ``dense``,
        ``hetconv:4``, ``flgc:8`` or ``flgc:8:free``."""
        if self.type == "hetconv":
            return f"hetconv:{self.part}"
        if self.type == "flgc":
            return f"flgc:{self.groups}" + ("" if self.balanced else ":free")
        return self.type

    @classmethod
    def from_label(cls, label: str) -> LayerSpec:
        match = _LABEL.fullmatch(str(label).strip())
        if match:
            kind, number, mode = match.groups()
            if kind == "dense" and number is None:
                return cls.dense()
            if kind == "hetconv" and number is not None and mode is None:
                return cls.hetconv(int(number))
            if kind == "flgc" and number is not None:
                return cls.flgc(int(number), balanced=mode != "free")
        raise ArchitectureError(
            f"cannot read layer choice {label!r}: use 'dense', 'hetconv:P', 'flgc:G' or 'flgc:G:free'"
        )

    def to_json(self) -> dict[str, Any]:
        if self.type == "hetconv":
            return {"type": "hetconv", "part": self.part}
        if self.type == "flgc":
            return {"type": "flgc", "groups": self.groups, "balanced": self.balanced}
        return {"type": self.type}

    @classmethod
    def from_json(cls, data: Any) -> LayerSpec:
        key = _spec_key(cls, data)
        known = _PARSED_SPECS.get(key) if key is not None else None
        if known is not None:
            return known
        spec = cls._parse_json(data)
        if key is not None and len(_PARSED_SPECS) < _MAX_PARSED_SPECS:
            _PARSED_SPECS[key] = spec
        return spec

    @classmethod
    def _parse_json(cls, data: Any) -> LayerSpec:
        if isinstance(data, str):
            return cls.from_label(data)
        if not isinstance(data, dict) or "type" not in data:
            raise ArchitectureError(f"a layer spec must be an object with a 'type', got {data!r}")
        kind = data["type"]
        extra = set(data) - {"type", "part", "groups", "balanced"}
        if extra:
            raise ArchitectureError(f"unknown key(s) {sorted(extra)} in layer spec {data!r}")
        if kind == "dense":
            return cls.dense()
        if kind == "hetconv" and _is_int(data.get("part")):
            return cls.hetconv(data["part"])
        if kind == "flgc" and _is_int(data.get("groups")) and isinstance(data.get("balanced", True), bool):
            return cls.flgc(data["groups"], data.get("balanced", True))
        raise ArchitectureError(
            f"bad layer spec {data!r}: use {{'type': 'dense'}}, {{'type': 'hetconv', 'part': P}} "
            "or {'type': 'flgc', 'groups': G, 'balanced': true}"
        )

    def conv_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`layers.create_conv2d`."""
        if self.type == "hetconv":
            return {"layer_type": "hetconv", "part": self.part}
        if self.type == "flgc":
            return {"layer_type": "flgc", "groups": self.groups, "balanced": self.balanced}
        return {"layer_type": self.type}

    def check(self, slot: LayerSlot) -> None:
        """Raise :class:`ArchitectureError` if this choice is illegal for ``slot``."""
        if self.type == "dense":
            return
        common = _common_divisors(slot.in_channels, slot.out_channels)
        where = f"layer {slot.name} ({slot.in_channels}->{slot.out_channels} channels)"
        if self.type == "hetconv":
            if self.part not in common:
                raise ArchitectureError(f"{where}: HetConv part {self.part} is illegal; legal parts: {common}")
        elif self.type == "flgc":
            if self.balanced and self.groups not in common:
                raise ArchitectureError(f"{where}: FLGC groups {self.groups} is illegal; legal groups: {common}")
            limit = min(slot.in_channels, slot.out_channels)
            if not self.balanced and not 1 <= (self.groups or 0) <= limit:
                raise ArchitectureError(f"{where}: free FLGC groups {self.groups} must be in 1..{limit}")
        else:
            raise ArchitectureError(f"{where}: unknown layer type {self.type!r}; use dense, hetconv or flgc")


_LABEL = re.compile(r"(dense|hetconv|flgc)(?::([0-9]+))?(?::(free|balanced))?", re.ASCII)


# Layer specs already parsed, by their JSON items (with the type of every value, so that
# ``True`` is never taken for ``1``): a study of thousands of trials repeats a few dozen specs,
# and a report parses every trial's architecture. Specs are immutable, so they are shared.
_PARSED_SPECS: dict[tuple[Any, ...], LayerSpec] = {}
_MAX_PARSED_SPECS = 4096


def _spec_key(cls: type, data: Any) -> tuple[Any, ...] | None:
    """The key of a layer spec's JSON in :data:`_PARSED_SPECS` (None: not cached)."""
    if not isinstance(data, dict):
        return None
    key = (cls, *((k, type(v), v) for k, v in data.items()))
    try:
        hash(key)
    except TypeError:  # an unhashable value: parsed (and refused) every time
        return None
    return key


def _is_int(value: Any) -> bool:
    """A JSON integer (``True`` is an int to Python, not to a config)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_hetconv_nesting(specs: Any) -> None:
    """Raise :class:`ArchitectureError` unless the HetConv parts among ``specs`` nest (each
    divides or is divided by every other).

    HetConv layers here use the block layout (filter block g sees channel block g); the
    HetConv paper (Singh et al., CVPR 2019) uses the strided one (filter i sees channels
    j = i mod P). One layer is the same up to a channel permutation, but between two
    connected layers the permutation must suit both parts at once: with nested parts one
    (a mixed-radix digit reversal) does, with parts such as 2 and 3 none can (the block form
    of P = 2 then P = 3 shares channel groups unevenly, the strided form evenly), so the
    trained network would not be the paper's. Parts that do not nest are refused here rather
    than silently trained as another network.
    """
    parts = sorted({spec.part for spec in specs if spec.type == "hetconv" and spec.part})
    for i, small in enumerate(parts):
        for large in parts[i + 1 :]:
            if large % small:
                raise ArchitectureError(
                    f"HetConv parts {small} and {large} do not nest (neither divides the other): a network mixing "
                    "them is not the HetConv paper's channel layout up to a permutation; use parts that divide "
                    "one another, such as powers of two"
                )


def _common_divisors(a: int, b: int) -> list[int]:
    g = math.gcd(a, b)
    return [d for d in range(1, g + 1) if g % d == 0]


@dataclass(frozen=True)
class Architecture:
    """A model family, width, number of classes and one :class:`LayerSpec` per searchable layer.

    Example:
        >>> arch = Architecture("vgg16", 0.25, 10, (LayerSpec.hetconv(4),) * 12)
        >>> Architecture.loads(arch.dumps()) == arch
        True
    """

    model: str
    width: float
    num_classes: int
    layers: tuple[LayerSpec, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "width", float(self.width))

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "width": self.width,
            "num_classes": self.num_classes,
            "layers": [spec.to_json() for spec in self.layers],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def from_json(cls, data: Any) -> Architecture:
        if not isinstance(data, dict):
            raise ArchitectureError(f"an architecture must be a JSON object, got {type(data).__name__}")
        missing = {"model", "width", "num_classes", "layers"} - set(data)
        if missing:
            raise ArchitectureError(f"architecture is missing {sorted(missing)}")
        if not isinstance(data["layers"], list):
            raise ArchitectureError("architecture 'layers' must be a list of layer specs")
        if (
            not _is_int(data["num_classes"])
            or isinstance(data["width"], bool)
            or not isinstance(data["width"], (int, float))
        ):
            raise ArchitectureError("architecture width must be a number and num_classes an integer")
        width, num_classes = float(data["width"]), int(data["num_classes"])
        return cls(str(data["model"]), width, num_classes, tuple(LayerSpec.from_json(s) for s in data["layers"]))

    @classmethod
    def loads(cls, text: str) -> Architecture:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ArchitectureError(f"architecture is not valid JSON: {err}") from None
        return cls.from_json(data)

    def summary(self) -> str:
        """Compact per-layer text, e.g. ``hetconv:4 hetconv:2 dense ...``."""
        return " ".join(spec.label for spec in self.layers)
