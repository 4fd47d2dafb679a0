#!/usr/bin/env python
"""GPU benchmark in one command: what the search costs on a device, as ratios to dense.

0. ``calls``: aten calls and kernel-launching calls of each training step below, counted on
   PyTorch's meta device (the GPU code path, without a GPU: ``layers.count_training_step``),
   against dense; on any machine, whatever ``--device``.
1. ``train``: a training step of whole models (forward under the recipe's autocast and
   layout, cross-entropy, backward, the recipe's SGD) per space and uniform choice, against the
   dense model of the same family; HetConv in each training form (``split``, ``dense``,
   ``auto``), FLGC as trained (balanced and ``free``) and with ``reassign_every=16``; on CUDA
   also replayed from a captured CUDA graph (``... graph``) and, with ``--compile``,
   ``torch.compile``d (``... compile``). With ``--baseline-rev REV`` the same models with the
   layer code of git revision REV (default ``c79171d``, before the GPU work) are timed (and
   counted) in the same round-robin, so old and new compare on one machine in one run.
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
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from bench._old_layers import old_layers, with_layers
from bench._timing import (
    Candidate,
    default_out,
    environment,
    measure_round_robin,
    print_table,
    setup_threads,
    write_csv,
)
from layers import FLGConv2d, HetConv2d, count_training_step
from models import LayerSpec, build_model, deploy
from search.evaluation.step import StepRunner, TrainingSetup, training_step
from spaces import get_space, space_names

ROOT = Path(__file__).resolve().parents[1]
REASSIGN = 16  # FLGC reassign_every timed beside the default 1
CSV_COLUMNS = [
    "part",
    "device",
    "space",
    "model_choice",
    "form",
    "batch",
    "calls",
    "launching",
    "ms",
    "ratio",
    "trials_per_hour",
    "note",
]
VALUES = {
    "vgg_hetconv": ["2", "4", "8", "16"],
    "vgg_flgc": ["2", "4", "8", "16"],
    "mbv2_flgc": ["2", "4", "8"],
    "vgg_mixed": ["hetconv:4", "flgc:4"],
}


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


def train_step(model: nn.Module, batch: int, device: torch.device, how: str = "eager", lr: float = 1e-3):
    """One step of the recipe (``search.evaluation.step.training_step``) on random data: bf16
    autocast and channels_last on CUDA, fused SGD with Nesterov momentum; float32 on CPU.
    ``how``: ``eager``; ``graph``, replayed from a CUDA graph captured at the first call
    (``StepRunner``, ``--cuda-graphs on``); ``compile``, the model ``torch.compile``d (the
    first call compiles)."""
    cuda = device.type == "cuda"
    model = model.to(device).train()
    x = torch.randn(batch, 3, 32, 32, device=device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, fused=True if cuda else None)
    setup = TrainingSetup(torch.bfloat16 if cuda else None, cuda, None, optimizer, torch.amp.GradScaler(enabled=False))
    if how == "graph":
        runner = StepRunner(model, setup, mode="on", device=device)
        return lambda: runner(x, y)
    stepped = torch.compile(model) if how == "compile" else model
    return lambda: training_step(stepped, x, y, setup)


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


def training_variants(name: str, args, old) -> list[tuple[str, str, nn.Module]]:
    """(choice, form, model) of every training step the ``calls`` and ``train`` parts measure:
    the dense model, then per uniform choice HetConv in each training form or FLGC as trained
    and with ``reassign_every=16`` (on ``vgg_flgc`` also with free assignment), each beside the
    same model with the layer code of ``--baseline-rev`` (``old``)."""
    space = get_space(name, width=args.width)
    old_form = f"old {args.baseline_rev}"
    torch.manual_seed(args.seed)
    variants = [("dense", "dense", build_model(space.dense()))]

    def with_old(choice: str, form: str, model: nn.Module) -> None:
        variants.append((choice, form, model))
        if old is not None:
            variants.append((choice, old_form, with_layers(model, old)))

    for value in VALUES[name][: 2 if args.quick else None]:
        torch.manual_seed(args.seed)
        model = build_model(space.uniform(value))
        if any(isinstance(m, HetConv2d) for m in model.modules()):
            for form in ("split", "dense"):
                variants.append((value, form, set_hetconv_form(model, form)))
            with_old(value, "auto", model)
        else:
            with_old(value, "as-trained", model)
            variants.append((value, f"reassign-every-{REASSIGN}", set_reassign_every(model, REASSIGN)))
        if name == "vgg_flgc" and value == VALUES[name][0]:  # free assignment, as the paper's code
            arch = space.uniform(value)
            free_layers = tuple(LayerSpec.flgc(s.groups, balanced=False) for s in arch.layers)
            with_old(f"{value}:free", "as-trained", build_model(replace(arch, layers=free_layers)))
    return variants


def calls_rows(name: str, variants: list[tuple[str, str, nn.Module]]) -> list[dict]:
    """Aten calls and kernel-launching calls per training step of every variant, counted on the
    meta device (the GPU code path, on any machine; ``layers.count_training_step``)."""
    rows = []
    for choice, form, model in variants:
        row = dict(part="calls", device="meta", space=name, model_choice=choice, form=form)
        try:
            count = count_training_step(copy.deepcopy(model))
        except (NotImplementedError, RuntimeError) as error:  # old code that reads values on the host
            rows.append(dict(row, note=f"cannot run on meta: {str(error).splitlines()[0][:60]}"))
            continue
        rows.append(dict(row, calls=count.calls, launching=count.launching))
    dense = next(r["calls"] for r in rows if r["model_choice"] == "dense")
    for row in rows:
        row["ratio"] = row["calls"] / dense if "calls" in row else float("nan")
    return rows


def model_parts(args, device: torch.device, old, parts: set[str]) -> list[dict]:
    """Aten calls per training step, training steps and deployed inference of uniform models
    of every space, each against the dense model of its space (times batch by batch)."""
    rows = []
    for name in args.spaces:
        variants = training_variants(name, args, old)
        if "calls" in parts:
            rows += calls_rows(name, variants)
        if not parts & {"train", "deploy"}:
            continue
        for batch in args.batch_sizes:
            base = dict(device=device.type, space=name, batch=batch)
            # every candidate a private copy: measured here, the original module timed up to
            # 15 % apart from its deep copies on CPU
            train = [
                Candidate(
                    train_step(copy.deepcopy(model), batch, device),
                    dict(base, part="train", model_choice=choice, form=form),
                )
                for choice, form, model in variants
                if "train" in parts
            ]
            if device.type == "cuda" and "train" in parts:  # the step replayed from a CUDA graph, and compiled
                for how in ("graph", "compile") if args.compile else ("graph",):
                    train += [
                        Candidate(
                            train_step(copy.deepcopy(model), batch, device, how),
                            dict(base, part="train", model_choice=choice, form=f"{form} {how}"),
                        )
                        for choice, form, model in variants
                        if form in ("dense", "auto", "as-trained")
                        and (how == "graph" or choice in ("dense", VALUES[name][0]))
                    ]
            inference = [
                Candidate(
                    infer(copy.deepcopy(model), batch, device),
                    dict(base, part="deploy", model_choice=choice, form="deployed"),
                )
                for choice, form, model in variants
                if "deploy" in parts
                and (choice == "dense" or form in ("auto", "as-trained"))
                and not choice.endswith(":free")
            ]
            if "train" in parts:
                measure(train, args, device)
                rows += rows_of(train)
            if "deploy" in parts:
                measure(inference, args, device)
                rows += rows_of(inference)
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
    parser.add_argument(
        "--parts", default="calls,train,deploy,search", help="calls, train, deploy, search (default: all)"
    )
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
    parser.add_argument(
        "--compile",
        action="store_true",
        help="on CUDA, also time torch.compile'd steps of each space's dense and first candidate (compiles each)",
    )
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
    rows = model_parts(args, device, old, parts)
    if "search" in parts:
        rows += search_part(args, device)
    timed = ["part", "space", "model_choice", "form", "batch", "ms", "ratio", "trials_per_hour", "note"]
    counted = ["part", "space", "model_choice", "form", "calls", "launching", "ratio", "note"]
    for part, title, columns, where in (
        ("calls", "aten calls per training step / dense", counted, "meta"),
        ("train", "training step / dense", timed, device),
        ("deploy", "deployed inference / dense", timed, device),
        ("search", "vgg_hetconv search, trials at once", timed, device),
    ):
        selected = [r for r in rows if r["part"] == part]
        if selected:
            print_table(selected, columns, title=f"\n{title} ({where}, width {args.width})")
    out = write_csv(rows, Path(args.out) if args.out else default_out("gpu"), CSV_COLUMNS)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
