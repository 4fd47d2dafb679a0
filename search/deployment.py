"""Export of a config's deployed model: TorchScript always, ONNX where the exporter works."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch

from models import Architecture, build_model, count_gathers, deploy

from .errors import UserError
from .retrain import load_config

__all__ = ["export_deployed"]


def export_deployed(
    config_path: str | Path,
    weights: str | Path | None = None,
    onnx: bool = False,
    hetconv_form: str = "auto",
    flgc_form: str = "auto",
    batch: int = 1,
) -> dict[str, Any]:
    """Deploy the model of an exported config (with ``weights``, by default the ``.pt`` that
    ``retrain`` saved beside it) and write ``<name>.torchscript.pt`` (and ``<name>.onnx``).
    ``auto`` forms are chosen by timing on this machine's CPU at ``batch``."""
    config_path = Path(config_path)
    config = load_config(config_path)
    arch = Architecture.from_json(config["architecture"])
    model = build_model(arch)
    weights = Path(weights) if weights else config_path.with_suffix(".pt")
    if weights.exists():
        try:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except (RuntimeError, OSError) as err:
            raise UserError(f"cannot load weights {weights} into {config_path.name}'s model: {str(err).splitlines()[0]}") from None
        trained = True
    else:
        trained = False
    model.eval()
    example = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    deployed = deploy(model, hetconv_form=hetconv_form, flgc_form=flgc_form, example_input=example)
    with torch.no_grad():
        max_difference = (model(example) - deployed(example)).abs().max().item()
    stem = config_path.with_suffix("")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still the portable format
        scripted = torch.jit.script(deployed)
    torchscript_path = Path(f"{stem}.torchscript.pt")
    scripted.save(str(torchscript_path))
    summary: dict[str, Any] = {
        "torchscript": str(torchscript_path),
        "weights": str(weights) if trained else None,
        "max_abs_difference": max_difference,
        "explicit_gathers": count_gathers(deployed),
    }
    if onnx:
        onnx_path = Path(f"{stem}.onnx")
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(deployed, (example[:1],), str(onnx_path), dynamo=True)
            summary["onnx"] = str(onnx_path)
        except Exception as err:  # noqa: BLE001  (the exporter's many failure modes all mean "not here")
            summary["onnx_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return summary
