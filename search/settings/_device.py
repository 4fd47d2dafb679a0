"""Which device a ``--device`` names, and whether this machine has it (input validation: a
missing GPU index would otherwise fail every trial). torch is imported only when asked."""

from __future__ import annotations

from typing import TYPE_CHECKING

from search.settings._validation import SettingsError

if TYPE_CHECKING:
    import torch

__all__ = ["check_device_available", "resolve_device"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda:1``, ``cpu`` etc. are taken as given."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for but CUDA is not available here; use --device cpu or auto")
    return device


def check_device_available(name: str) -> None:
    """SettingsError unless ``name`` is a device this machine has."""
    import torch

    try:
        device = resolve_device(name)
    except (ValueError, RuntimeError) as err:
        raise SettingsError(str(err)) from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SettingsError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SettingsError(f"--device {name}: MPS (Apple GPU) is not available here; use --device cpu or auto")
