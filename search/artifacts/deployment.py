"""Export of a config's deployed model: TorchScript always, ONNX where the exporter works."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch

from layers import upgrade_hetconv_state
from models import Architecture, build_model, count_gathers, deploy
from search.artifacts.retrain import check_writable, load_config
from search.errors import SearchAborted, UserError
from search.evaluation.evaluate import out_of_memory, out_of_memory_line

__all__ = ["check_onnx_extra", "export_deployed", "load_weights"]


def check_onnx_extra() -> None:
    """``--onnx`` needs the ``[onnx]`` extra: say so before anything is written."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f'--onnx needs {" and ".join(missing)}, which are not installed: pip install -e ".[onnx]" (or leave --onnx out)'
        )


def load_weights(model: torch.nn.Module, weights: Path, config_name: str) -> None:
    """Load a state dict saved by ``retrain``, with one-line errors that name the difference
    (HetConv layers saved in the two-weight layout of earlier versions are converted)."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (pickle, zip and torch errors: all mean "not a weights file")
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:150]
        raise UserError(f"--weights {weights} is not a torch state dict saved by 'retrain' ({reason})") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise UserError(f"--weights {weights} holds no state dict (a mapping of names to tensors)")
    state = upgrade_hetconv_state(model, state)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
            f"{len(shapes)} of another shape (e.g. {shapes[0]})" if shapes else "",
        ]
        raise UserError(
            f"--weights {weights} belong to another model than {config_name}'s: "
            f"{'; '.join(p for p in parts if p)} tensors; retrain this config or pick its .pt"
        )
    model.load_state_dict(state)


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
    if onnx:
        check_onnx_extra()
    check_writable(config_path)
    explicit = bool(weights)
    weights = Path(weights) if weights else config_path.with_suffix(".pt")
    try:
        trained = weights.is_file()
    except OSError as err:  # e.g. a name too long for the file system
        raise UserError(f"--weights {weights}: {err.strerror}") from None
    if not trained and explicit:
        raise UserError(f"--weights {weights} is not a file; give the .pt that 'retrain' saved, or leave --weights out")
    arch = Architecture.from_json(config["architecture"])
    model = build_model(arch)
    if trained:
        load_weights(model, weights, config_path.name)
    model.eval()
    try:
        example = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        deployed = deploy(model, hetconv_form=hetconv_form, flgc_form=flgc_form, example_input=example)
        with torch.no_grad():
            max_difference = (model(example) - deployed(example)).abs().max().item()
    except RuntimeError as err:  # torch.OutOfMemoryError is one
        if not out_of_memory(err):
            raise
        raise UserError(out_of_memory_line("--batch", batch, "running the model at that batch", err)) from None
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
            reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
            raise SearchAborted(
                f"ONNX export failed ({reason}); the TorchScript model is at {torchscript_path}"
            ) from None
    return summary
