"""Short labels of layer choices and baselines (``P4``, ``G8``, ``D``, ``dense``): shared by the
report, the end-of-search lines and the verdicts on baselines."""

from __future__ import annotations

from models import LayerSpec
from search.storage import TrialRecord

__all__ = ["baseline_label", "layer_code", "layer_value"]


def layer_value(spec: LayerSpec) -> int:
    """The cost-relevant number of a layer choice: HetConv part P, FLGC groups G, dense 1."""
    if spec.type == "hetconv":
        return int(spec.part or 1)
    if spec.type == "flgc":
        return int(spec.groups or 1)
    return 1


def layer_code(spec: LayerSpec) -> str:
    """Short text of a layer choice: ``P4`` (HetConv part 4), ``G8`` (FLGC groups 8; ``G8f``
    when the groups are free/unbalanced) or ``D`` (dense)."""
    if spec.type == "hetconv":
        return f"P{spec.part}"
    if spec.type == "flgc":
        return f"G{spec.groups}" + ("" if spec.balanced else "f")
    if spec.type == "dense":
        return "D"
    return spec.label


def baseline_label(record: TrialRecord) -> str:
    """Text label of a baseline: ``P4``, ``G8``, ``dense`` or its name (``flgc-paper``)."""
    arch = record.architecture
    if arch is not None and arch.layers and len(set(arch.layers)) == 1:
        spec = arch.layers[0]
        return "dense" if spec.type == "dense" else layer_code(spec)
    return str(record.baseline)
