"""The layer code of an earlier git revision, beside today's, for benchmarks that time old and
new in the same round-robin of one run (ratios from one run are the only ones a shared,
noisy machine gives).

The whole ``layers`` package of the revision is imported under its own name, so that its
modules import each other (not today's ones) and the two versions cannot mix.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import re
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import torch
from torch import nn

from layers import FLGConv2d, HetConv2d

__all__ = ["old_layers", "with_layers"]

ROOT = Path(__file__).resolve().parents[1]


def old_layers(rev: str) -> types.ModuleType:
    """The ``layers`` package as it was at git revision ``rev`` (``FLGConv2d``, ``HetConv2d``
    ...), imported as ``layers_at_<rev>``."""
    name = "layers_at_" + re.sub(r"\W", "_", rev)
    if name in sys.modules:
        return sys.modules[name]
    archive = subprocess.run(["git", "archive", rev, "layers"], cwd=ROOT, capture_output=True, check=True).stdout
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-")) / "layers"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder.parent, filter="data")
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def with_layers(model: nn.Module, old: types.ModuleType) -> nn.Module:
    """A copy of ``model`` whose FLGC and HetConv layers run ``old``'s code, same weights (each
    old FLGC layer solves its own assignment, as the old code did)."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, FLGConv2d):
                cls, size, extra = (
                    old.FLGConv2d,
                    child.groups,
                    dict(bias=child.bias is not None, balanced=child.balanced),
                )
            elif isinstance(child, HetConv2d):
                cls, size, extra = old.HetConv2d, child.part, dict(bias=child.bias is not None)
            else:
                continue
            shape = (child.in_channels, child.out_channels, size, child.kernel_size, child.stride, child.padding)
            new = cls(*shape, **extra)
            if isinstance(child, HetConv2d) and hasattr(new, "gwc"):
                _load_two_weights(new, child)
            else:
                new.load_state_dict(child.state_dict())
            setattr(parent, name, new)
    return model


@torch.no_grad()
def _load_two_weights(old: nn.Module, layer: HetConv2d) -> None:
    """``layer``'s weights into a HetConv layer of the two-weight layout of earlier revisions
    (``gwc``, a grouped KxK conv with the bias, and ``pwc``, the 1x1 conv)."""
    grouped, pointwise = layer.parts()
    old.gwc.weight.copy_(grouped)
    if layer.bias is not None:
        old.gwc.bias.copy_(layer.bias)
    if pointwise is not None:
        old.pwc.weight.copy_(pointwise)
