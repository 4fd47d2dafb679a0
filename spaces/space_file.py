"""User-defined spaces from a YAML or JSON file.

Format::

    model: vgg16              # a model family (vgg16, mobilenetv2)
    width: 0.5                # optional, default 1.0
    choices: [dense, "hetconv:2", "hetconv:4", "flgc:4"]   # every layer; a value a layer
                                                           # cannot take is dropped there
                                                           # (`spaces FILE` says where), one
                                                           # no layer can take is an error
    layers:                   # optional per-layer overrides, by layer name; must all be legal
      conv02: [dense]
      conv13: ["hetconv:8", "flgc:8"]
    default_type: hetconv     # optional: what a bare number means in --uniform
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import yaml

from models import ArchitectureError, LayerSlot, LayerSpec, get_model_family

from .base import SearchSpace, SpaceError

__all__ = ["load_space_file"]

_KEYS = {"name", "description", "model", "width", "choices", "layers", "default_type"}
MAX_BYTES = 1 << 20  # a space file is a few hundred bytes; refuse before reading a huge one


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without aliases: ``*ref`` could expand a few bytes into gigabytes (an
    "alias bomb"), and a space file never needs one."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"aliases (*name) are not allowed in a space file (line {mark.line + 1})")
        return super().compose_node(parent, index)


def _read(path: Path) -> dict[str, Any]:
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        if not path.is_file():
            raise SpaceError(f"space file {path} {'is not a file' if path.exists() else 'does not exist'}")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SpaceError(
                f"space file {path} is {size / 2**20:.1f} MiB, over the {MAX_BYTES >> 20} MiB limit; a space file is a few lines"
            )
        raw = path.read_bytes()
    except OSError as err:
        raise SpaceError(f"cannot read space file {path}: {err.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpaceError(f"space file {path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    try:
        data = json.loads(text) if kind == "JSON" else yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (safe loader)
    except (json.JSONDecodeError, yaml.YAMLError, RecursionError, ValueError) as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SpaceError(f"space file {path} is not valid {kind}: {first_line}") from None
    if not isinstance(data, dict):
        raise SpaceError(f"space file {path} must hold a mapping with 'model' and 'choices'")
    return data


def _names(keys: Any) -> str:
    """Keys of any YAML type (numbers, null, ...) listed readably, in a stable order."""
    return ", ".join(sorted(repr(k) if not isinstance(k, str) else k for k in keys))


def _text(data: dict[str, Any], key: str, path: Path) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool) or len(str(value)) > 1000:
        raise SpaceError(f"space file {path}: '{key}' must be a short text, got {type(value).__name__}")
    return str(value)


def _specs(values: Any, where: str) -> list[LayerSpec]:
    if not isinstance(values, list) or not values:
        raise SpaceError(f"{where} must be a non-empty list of choices such as [dense, 'hetconv:4', 'flgc:8']")
    try:
        return [LayerSpec.from_json(v) for v in values]
    except ArchitectureError as err:
        raise SpaceError(f"{where}: {err}") from None
    except (TypeError, ValueError, OverflowError):  # e.g. keys of mixed types in a spec mapping
        raise SpaceError(
            f"{where} must be a non-empty list of choices such as [dense, 'hetconv:4', 'flgc:8']"
        ) from None


def load_space_file(path: str | Path, width: float | None, num_classes: int) -> SearchSpace:
    """Read a space file; ``width`` (if given) overrides the file's."""
    path = Path(path)
    data = _read(path)
    unknown = [k for k in data if k not in _KEYS]
    if unknown:
        raise SpaceError(f"space file {path}: unknown key(s) {_names(unknown)}; allowed: {_names(_KEYS)}")
    if "model" not in data:
        raise SpaceError(f"space file {path}: 'model' is missing")
    try:
        family = get_model_family(_text(data, "model", path) or "")
    except ArchitectureError as err:
        raise SpaceError(f"space file {path}: {err}") from None
    for raw_width in (data.get("width", 1.0), width):  # the file's value must be valid even when --width wins
        if raw_width is None:
            continue
        if isinstance(raw_width, bool) or not isinstance(raw_width, (int, float)):
            raise SpaceError(f"space file {path}: width must be a number, got {raw_width!r:.40}")
        if not 0 < (float(raw_width) if abs(raw_width) < 1e300 else math.inf) <= 4:
            raise SpaceError(f"space file {path}: width {str(raw_width)[:20]} is out of range (0, 4]")
    width = float(width if width is not None else data.get("width", 1.0))
    if not 0 < width <= 4:
        raise SpaceError(f"space file {path}: width {width} is out of range (0, 4]")
    slots = {slot.name: slot for slot in family.slots(width)}
    default = _specs(data["choices"], f"space file {path}: 'choices'") if "choices" in data else None
    overrides = data.get("layers") or {}
    if not isinstance(overrides, dict):
        raise SpaceError(f"space file {path}: 'layers' must map layer names to lists of choices")
    bad = [name for name in overrides if name not in slots]
    if bad:
        raise SpaceError(f"space file {path}: unknown layer(s) {_names(bad)}; {family.name} has {', '.join(slots)}")
    if default is None and set(overrides) != set(slots):
        raise SpaceError(f"space file {path}: give 'choices' for all layers, or 'layers' for every layer")
    per_layer = {name: _specs(v, f"space file {path}: layer {name}") for name, v in overrides.items()}
    fits = _where_choices_fit(
        default or [], [slot for name, slot in slots.items() if name not in per_layer], path, width
    )

    def choose(slot: LayerSlot) -> list[LayerSpec]:
        if slot.name in per_layer:
            return per_layer[slot.name]  # explicit: must be legal, SearchSpace checks and names it
        return [spec for spec in default or [] if slot.name in fits[spec]]

    types = {spec.type for specs in [default or [], *per_layer.values()] for spec in specs}
    default_type = _text(data, "default_type", path) or (
        "flgc" if "flgc" in types and "hetconv" not in types else "hetconv"
    )
    if default_type not in ("hetconv", "flgc"):
        raise SpaceError(f"space file {path}: default_type must be hetconv or flgc, got {default_type!r}")
    try:
        space = SearchSpace.from_choices(
            _text(data, "name", path) or path.stem,
            _text(data, "description", path) or f"user space from {path.name}",
            family.name,
            width,
            num_classes,
            default_type,
            choose,
        )
    except ArchitectureError as err:
        raise SpaceError(f"space file {path}: {err}") from None
    taking = [name for name in slots if name not in per_layer]
    unfit = tuple(
        (spec.label, tuple(name for name in taking if name not in fits[spec]))
        for spec in dict.fromkeys(default or [])
        if len(fits[spec]) < len(taking)
    )
    return dataclasses.replace(space, unfit=unfit)


def _where_choices_fit(
    choices: list[LayerSpec], slots: list[LayerSlot], path: Path, width: float
) -> dict[LayerSpec, list[str]]:
    """The layers (of ``slots``, those that take 'choices') each choice fits. A choice that
    fits none of them is a mistake (``hetconv:0``, a part that divides no channel count at
    this width), not a value to drop without a word: SpaceError."""
    fits: dict[LayerSpec, list[str]] = {spec: [] for spec in choices}
    reasons: dict[LayerSpec, str] = {}
    for slot in slots:
        for spec in fits:
            try:
                spec.check(slot)
            except ArchitectureError as err:
                reasons.setdefault(spec, str(err))
                continue
            fits[spec].append(slot.name)
    for spec, names in fits.items():
        if slots and not names:
            raise SpaceError(
                f"space file {path}: choice {spec.label} fits no layer at width {width:g} ({reasons[spec]}); "
                "remove it or give a value that divides the layers' channels"
            )
    return fits
