"""User-defined spaces from a YAML or JSON file.

Format::

    model: vgg16              # a model family (vgg16, mobilenetv2)
    width: 0.5                # optional, default 1.0
    choices: [dense, "hetconv:2", "hetconv:4", "flgc:4"]   # every layer; values a layer
                                                           # cannot take are dropped for it
    layers:                   # optional per-layer overrides, by layer name; must all be legal
      conv02: [dense]
      conv13: ["hetconv:8", "flgc:8"]
    default_type: hetconv     # optional: what a bare number means in --uniform
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from models import ArchitectureError, LayerSpec, get_model_family

from .base import SearchSpace, SpaceError

__all__ = ["load_space_file"]

_KEYS = {"name", "description", "model", "width", "choices", "layers", "default_type"}


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise SpaceError(f"cannot read space file {path}: {err.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        first_line = str(err).strip().splitlines()[0]
        raise SpaceError(f"space file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {first_line}") from None
    if not isinstance(data, dict):
        raise SpaceError(f"space file {path} must hold a mapping with 'model' and 'choices'")
    return data


def _specs(values: Any, where: str) -> list[LayerSpec]:
    if not isinstance(values, list) or not values:
        raise SpaceError(f"{where} must be a non-empty list of choices such as [dense, 'hetconv:4', 'flgc:8']")
    try:
        return [LayerSpec.from_json(v) for v in values]
    except ArchitectureError as err:
        raise SpaceError(f"{where}: {err}") from None


def load_space_file(path: str | Path, width: float | None, num_classes: int) -> SearchSpace:
    """Read a space file; ``width`` (if given) overrides the file's."""
    path = Path(path)
    data = _read(path)
    unknown = set(data) - _KEYS
    if unknown:
        raise SpaceError(f"space file {path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    if "model" not in data:
        raise SpaceError(f"space file {path}: 'model' is missing")
    try:
        family = get_model_family(str(data["model"]))
    except ArchitectureError as err:
        raise SpaceError(f"space file {path}: {err}") from None
    try:
        width = float(width if width is not None else data.get("width", 1.0))
    except (TypeError, ValueError):
        raise SpaceError(f"space file {path}: width must be a number") from None
    if not 0 < width <= 4:
        raise SpaceError(f"space file {path}: width {width} is out of range (0, 4]")
    slots = {slot.name: slot for slot in family.slots(width)}
    default = _specs(data["choices"], f"space file {path}: 'choices'") if "choices" in data else None
    overrides = data.get("layers") or {}
    if not isinstance(overrides, dict):
        raise SpaceError(f"space file {path}: 'layers' must map layer names to lists of choices")
    bad = set(overrides) - set(slots)
    if bad:
        raise SpaceError(f"space file {path}: unknown layer(s) {sorted(bad)}; {family.name} has {', '.join(slots)}")
    if default is None and set(overrides) != set(slots):
        raise SpaceError(f"space file {path}: give 'choices' for all layers, or 'layers' for every layer")
    per_layer = {name: _specs(v, f"space file {path}: layer {name}") for name, v in overrides.items()}

    def choose(slot):
        if slot.name in per_layer:
            return per_layer[slot.name]  # explicit: must be legal, SearchSpace checks and names it
        legal = []
        for spec in default:
            try:
                spec.check(slot)
            except ArchitectureError:
                continue
            legal.append(spec)
        return legal

    types = {spec.type for specs in [default or [], *per_layer.values()] for spec in specs}
    default_type = data.get("default_type") or ("flgc" if "flgc" in types and "hetconv" not in types else "hetconv")
    if default_type not in ("hetconv", "flgc"):
        raise SpaceError(f"space file {path}: default_type must be hetconv or flgc, got {default_type!r}")
    try:
        return SearchSpace.from_choices(
            str(data.get("name") or path.stem),
            str(data.get("description") or f"user space from {path.name}"),
            family.name,
            width,
            num_classes,
            default_type,
            choose,
        )
    except ArchitectureError as err:
        raise SpaceError(f"space file {path}: {err}") from None
