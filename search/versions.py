"""The versions of the software a result was made with: written into run.json and into every
exported config, so a result can be reproduced (or a difference explained) later."""

from __future__ import annotations

import functools
import platform
from importlib import metadata

__all__ = ["package_versions"]


def package_versions() -> dict[str, str]:
    """The versions of Python and of the packages a result depends on (a fresh dict each call)."""
    return dict(_versions())


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    """Read once per process: an export writes one config per front member, hundreds for a
    large study, and each read of the installed packages' metadata took milliseconds."""
    versions = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "optuna", "ptflops", "ray", "numpy", "pandas", "plotly"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
