"""Search spaces by name (built-in) or by file (YAML/JSON).

Example:
    >>> from spaces import get_space
    >>> space = get_space("vgg_hetconv")
    >>> [len(c) for c in space.choices][:3]
    [7, 7, 7]
"""

from __future__ import annotations

from pathlib import Path

from .base import SearchSpace, SpaceError, TrialLike
from .builtin import BUILTIN_SPACES
from .space_file import load_space_file

__all__ = ["SearchSpace", "SpaceError", "TrialLike", "get_space", "space_names"]


def space_names() -> list[str]:
    return list(BUILTIN_SPACES)


def get_space(name: str, width: float | None = None, num_classes: int = 10) -> SearchSpace:
    """A built-in space by name, or a user space from a ``.yaml``/``.yml``/``.json`` path."""
    if name in BUILTIN_SPACES:
        recipe = BUILTIN_SPACES[name]
        width = 1.0 if width is None else float(width)
        if not 0 < width <= 4:
            raise SpaceError(f"width {width} is out of range; use a multiplier in (0, 4]")
        return SearchSpace.from_choices(
            name,
            recipe.description,
            recipe.model,
            width,
            num_classes,
            recipe.default_type,
            recipe.choose,
            recipe.baselines,
        )
    if Path(name).suffix in (".yaml", ".yml", ".json"):
        return load_space_file(name, width, num_classes)
    raise SpaceError(
        f"unknown space {name!r}; built-in spaces: {', '.join(space_names())}, or a .yaml/.json space file"
    )
