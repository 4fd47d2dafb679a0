"""The versions of the software a result was made with: written into run.json and into every
exported config, so a result can be reproduced (or a difference explained) later."""

from __future__ import annotations

import platform
from importlib import metadata

__all__ = ["package_versions"]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "optuna", "ptflops", "ray", "numpy", "pandas", "plotly"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
