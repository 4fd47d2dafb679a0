#!/usr/bin/env python
"""GPU benchmark in one command: what the search costs on a device, as ratios to dense.

1. ``train``: a training step of whole models (forward under the recipe's autocast and
   layout, cross-entropy, backward, the recipe's SGD) per space and uniform choice, against the
   dense model of the same family; HetConv in each training form (``split``, ``dense``,
   ``auto``), FLGC as trained (balanced and ``free``) and with ``reassign_every=16``. With ``--baseline-rev REV`` the same
   models with the layer code of git revision REV (default ``c79171d``, before the GPU work)
   are timed in the same round-robin, so old and new compare on one machine in one run.
2. ``deploy``: inference of the deployed models (``hetconv_form``/``flgc_form`` ``auto``)
   against the deployed dense model.
3. ``search``: trials per hour of a short ``vgg_hetconv`` search run through the CLI with 1
   and K trials at once (``--trials-per-gpu``; on CPU ``--workers``), from the trials'
   own start and end times (process start-up and data loading excluded).

Every time is a median of round-robin samples; on CUDA each sample is bracketed by
``torch.cuda.synchronize()``. Prints one table per part and writes every row to a CSV.

    python bench/gpu.py                                   # CUDA, width 1, batch 128 and 512
    python bench/gpu.py --device cpu --quick --threads 1  # CPU figures, small settings
    python bench/gpu.py --data-dir DIR --dataset cifar10  # trials per hour on CIFAR-10
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import nn

from bench._timing import (
    Candidate,
    default_out,
    environment,
    measure_round_robin,
    print_table,
    setup_threads,
    write_csv,
)
from layers import FLGConv2d, HetConv2d
from models import LayerSpec, build_model, deploy
from spaces import get_space, space_names

ROOT = Path(__file__).resolve().parents[1]
REASSIGN = 16  # FLGC reassign_every timed beside the default 1
CSV_COLUMNS = ["part", "device", "space", "model_choice", "form", "batch", "ms", "ratio", "trials_per_hour", "note"]
VALUES = {
    "vgg_hetconv": ["2", "4", "8", "16"],
    "vgg_flgc": ["2", "4", "8"],
    "mbv2_flgc": ["2", "4", "8"],
    "vgg_mixed": ["hetconv:4", "flgc:4"],
}


def old_layers(rev: str) -> types.SimpleNamespace:
    """``FLGConv2d`` and ``HetConv2d`` as they were at git revision ``rev``."""
    found = {}
    for name, cls in (("flgc", "FLGConv2d"), ("hetconv", "HetConv2d")):
        source = subprocess.run(
            ["git", "show", f"{rev}:layers/{name}.py"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        module = types.ModuleType(f"_old_{name}")
        module.__dict__["__package__"] = "layers"  # its relative imports (deploy only) still resolve
        exec(compile(source, f"{rev}:layers/{name}.py", "exec"), module.__dict__)
        found[cls] = getattr(module, cls)
    return types.SimpleNamespace(**found)


def with_layers(model: nn.Module, old: types.SimpleNamespace) -> nn.Module:
    """A copy of ``model`` whose FLGC and HetConv layers run the old code, same weights."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, FLGConv2d):
                new = old.FLGConv2d(
                    child.in_channels,
                    child.out_channels,
                    child.groups,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    bias=child.bias is not None,
                    balanced=child.balanced,
                )
            elif isinstance(child, HetConv2d):
                new = old.HetConv2d(
                    child.in_channels,
                    child.out_channels,
                    child.part,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    bias=child.gwc.bias is not None,
                )
            else:
                continue
            new.load_state_dict(child.state_dict())
            setattr(parent, name, new)
    return model


def _copy_setting(model: nn.Module, layer_type: type, name: str, value: object) -> nn.Module:
    """A copy of ``model`` with ``name = value`` on every layer of ``layer_type``."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, layer_type):
            setattr(m, name, value)
    return model


def set_hetconv_form(model: nn.Module, form: str) -> nn.Module:
    return _copy_setting(model, HetConv2d, "training_form", form)


def set_reassign_every(model: nn.Module, k: int) -> nn.Module:
    return _copy_setting(model, FLGConv2d, "reassign_every", k)


def train_step(model: nn.Module, batch: int, device: torch.device, lr: float = 1e-3):
    """One step of the recipe on random data: bf16 autocast and channels_last on CUDA, fused
    SGD with Nesterov momentum; float32 on CPU."""
    cuda = device.type == "cuda"
    model = model.to(device).train()
    x = torch.randn(batch, 3, 32, 32, device=device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, fused=True if cuda else None)
    dtype = torch.bfloat16 if cuda else None

    def run():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return run


def infer(model: nn.Module, batch: int, device: torch.device):
    x = torch.randn(batch, 3, 32, 32, device=device)
    model = model.to(device).eval()
    if device.type == "cuda":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    example = x

    deployed = deploy(model, hetconv_form="auto", flgc_form="auto", example_input=example)

    def run():
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            deployed(x)

    return run


def measure(candidates: list[Candidate], args, device: torch.device) -> None:
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    measure_round_robin(candidates, args.repeats, args.warmup, min_sample_ms=args.min_sample_ms, sync=sync)


def rows_of(candidates: list[Candidate]) -> list[dict]:
    rows = []
    reference = {}
    for c in candidates:
        if c.row["model_choice"] == "dense" and c.row["form"] in ("dense", "deployed"):
            reference[(c.row["space"], c.row["batch"], c.row["part"])] = c.median_ms
    for c in candidates:
        row = dict(c.row, ms=c.median_ms)
        ref = reference.get((row["space"], row["batch"], row["part"]))
        row["ratio"] = row["ms"] / ref if ref else float("nan")
        rows.append(row)
    return rows


def model_parts(args, device: torch.device, old) -> list[dict]:
    """Training steps (and deployed inference) of uniform models of every space, each
    against the dense model of its space, batch by batch."""
    rows = []
    old_form = f"old {args.baseline_rev}"
    for name in args.spaces:
        space = get_space(name, width=args.width)
        for batch in args.batch_sizes:
            base = dict(device=device.type, space=name, batch=batch)
            train: list[Candidate] = []
            inference: list[Candidate] = []

            # the closures below run within this iteration, so the loop variables they read are current
            def timed(model: nn.Module, choice: str, form: str) -> None:
                # every candidate a private copy: measured here, the original module timed
                # up to 15 % apart from its deep copies on CPU
                step = train_step(copy.deepcopy(model), batch, device)  # noqa: B023
                train.append(Candidate(step, dict(base, part="train", model_choice=choice, form=form)))  # noqa: B023

            def timed_with_old(model: nn.Module, choice: str, form: str) -> None:
                timed(model, choice, form)
                if old is not None:
                    timed(with_layers(model, old), choice, old_form)

            torch.manual_seed(args.seed)
            dense = build_model(space.dense())
            timed(dense, "dense", "dense")
            inference.append(
                Candidate(
                    infer(copy.deepcopy(dense), batch, device),
                    dict(base, part="deploy", model_choice="dense", form="deployed"),
                )
            )
            for value in VALUES[name][: 2 if args.quick else None]:
                torch.manual_seed(args.seed)
                model = build_model(space.uniform(value))
                if any(isinstance(m, HetConv2d) for m in model.modules()):
                    for form in ("split", "dense", "auto"):
                        timed(set_hetconv_form(model, form), value, form)
                    if old is not None:
                        timed(with_layers(model, old), value, old_form)
                else:
                    timed_with_old(model, value, "as-trained")
                    timed(set_reassign_every(model, REASSIGN), value, f"reassign-every-{REASSIGN}")
                if name == "vgg_flgc" and value == VALUES[name][0]:  # free assignment, as the paper's code
                    arch = space.uniform(value)
                    free_layers = tuple(LayerSpec.flgc(s.groups, balanced=False) for s in arch.layers)
                    timed_with_old(build_model(replace(arch, layers=free_layers)), f"{value}:free", "as-trained")
                inference.append(
                    Candidate(
                        infer(model, batch, device), dict(base, part="deploy", model_choice=value, form="deployed")
                    )
                )
            measure(train, args, device)
            measure(inference, args, device)
            rows += rows_of(train) + rows_of(inference)
    return rows


def search_part(args, device: torch.device) -> list[dict]:
    """Trials per hour of a short vgg_hetconv search with 1 and K trials at once."""
    import optuna

    rows = []
    for k in args.trials_per_gpu:
        with tempfile.TemporaryDirectory() as tmp:
            pack = ["--trials-per-gpu", str(k)] if device.type == "cuda" else ["--workers", str(k)]
            cmd = [
                sys.executable,
                str(ROOT / "run_search.py"),
                "--space",
                "vgg_hetconv",
                "--budget",
                str(args.search_trials),
                "--epochs",
                str(args.search_epochs),
                "--width",
                str(args.search_width),
                "--dataset",
                args.dataset,
                "--device",
                device.type,
                "--early-stop",
                "none",
                "--no-report",
                "--quiet",
                "--results-dir",
                tmp,
                "--threads",
                str(args.threads),
                *pack,
            ]
            if args.data_dir:
                cmd += ["--data-dir", args.data_dir]
            started = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - started
            note = f"wall {wall:.1f} s"
            if proc.returncode != 0:
                rows.append(
                    dict(
                        part="search",
                        device=device.type,
                        space="vgg_hetconv",
                        model_choice="",
                        form=f"{k} at once",
                        note=f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}",
                    )
                )
                continue
            storage = f"sqlite:///{Path(tmp) / 'studies.db'}"
            study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
            done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
            rows.append(
                dict(
                    part="search",
                    device=device.type,
                    space="vgg_hetconv",
                    model_choice="uniform search",
                    form=f"{k} at once",
                    ms=span * 1000 / max(len(done), 1),
                    trials_per_hour=len(done) * 3600 / span if span > 0 else float("nan"),
                    note=note,
                )
            )
    base = next((r["trials_per_hour"] for r in rows if r.get("trials_per_hour")), None)
    for r in rows:
        r["ratio"] = r["trials_per_hour"] / base if base and r.get("trials_per_hour") else float("nan")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cuda, cuda:1, cpu (default: auto)")
    parser.add_argument(
        "--batch-sizes", default=None, help="training and inference batches (default: 128,512; 32 with --quick)"
    )
    parser.add_argument("--spaces", default=",".join(space_names()), help="spaces to time (default: all built-in)")
    parser.add_argument("--width", type=float, default=None, help="model width (default: 1; 0.25 with --quick)")
    parser.add_argument("--parts", default="train,deploy,search", help="train, deploy, search (default: all)")
    parser.add_argument(
        "--baseline-rev", default="c79171d", help="git revision whose layer code is timed beside (or 'none')"
    )
    parser.add_argument("--trials-per-gpu", default="1,4", help="trials at once in the search part (default: 1,4)")
    parser.add_argument(
        "--search-trials", type=int, default=None, help="trials per search (default: 8; 4 with --quick)"
    )
    parser.add_argument("--search-epochs", type=int, default=None, help="epochs per trial (default: 2; 1 with --quick)")
    parser.add_argument("--search-width", type=float, default=None, help="model width in the search (default: --width)")
    parser.add_argument("--dataset", default="digits", help="data of the search part: digits (no download) or cifar10")
    parser.add_argument("--data-dir", default=None, help="where cifar10 lies (passed to run_search.py)")
    parser.add_argument("--quick", action="store_true", help="small settings: a smoke run (CPU: about a minute)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed samples per candidate (default: 15; 5 with --quick)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per candidate (default: 3)")
    parser.add_argument("--min-sample-ms", type=float, default=20.0, help="calls per sample so that it lasts this long")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="CSV path (default: results/bench/gpu_<time>.csv)")
    args = parser.parse_args(argv)

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, f"error: --device {args.device} but CUDA is not available here; use --device cpu\n")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    args.spaces = [s.strip() for s in args.spaces.split(",") if s.strip()]
    unknown = [s for s in args.spaces if s not in VALUES]
    if unknown:
        parser.exit(2, f"error: unknown space(s) {', '.join(unknown)}; use some of {', '.join(VALUES)}\n")
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("32" if args.quick else "128,512")).split(",")]
    args.width = args.width or (0.25 if args.quick else 1.0)
    args.repeats = args.repeats or (5 if args.quick else 15)
    args.search_trials = args.search_trials or (4 if args.quick else 8)
    args.search_epochs = args.search_epochs or (1 if args.quick else 2)
    args.search_width = args.search_width or args.width
    args.trials_per_gpu = [int(k) for k in args.trials_per_gpu.split(",")]
    parts = {p.strip() for p in args.parts.split(",")}
    setup_threads(args.threads)
    old = None if args.baseline_rev == "none" else old_layers(args.baseline_rev)

    env = environment()
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    print("environment:", env)
    rows = model_parts(args, device, old) if parts & {"train", "deploy"} else []
    rows = [r for r in rows if r["part"] in parts]
    if "search" in parts:
        rows += search_part(args, device)
    columns = ["part", "space", "model_choice", "form", "batch", "ms", "ratio", "trials_per_hour", "note"]
    for part, title in (
        ("train", "training step / dense"),
        ("deploy", "deployed inference / dense"),
        ("search", "vgg_hetconv search, trials at once"),
    ):
        selected = [r for r in rows if r["part"] == part]
        if selected:
            print_table(selected, columns, title=f"\n{title} ({device}, width {args.width})")
    out = write_csv(rows, Path(args.out) if args.out else default_out("gpu"), CSV_COLUMNS)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
