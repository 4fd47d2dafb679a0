#!/usr/bin/env python
"""Whole-model benchmark: training and deployed forms of uniform HetConv/FLGC models and of
exported Pareto configs, against the dense model of the same family and width.

Models (width 1.0 unless ``--width``):

- VGG-16: ``dense``; uniform HetConv P in 2, 4, 8: ``training_form``, ``deployed_split``,
  ``deployed_dense`` and ``deployed_best`` (the faster of the two, per model: derived, not
  measured again); uniform FLGC G in 2, 4, 8: ``training_form``, ``deployed_folded``
  (``deploy(model)``), ``deployed_unfolded`` (``fold=False``: every gather explicit; not with
  ``--quick``), ``deployed_auto`` (``flgc_form="auto"``: per layer the grouped or the dense
  form, whichever makes the whole model faster at batch 64) and ``standard_group_conv`` (the deployed model with every ``ChannelGather`` removed: exactly a
  model of standard grouped convs of the same shapes, what FLGC's deployment should match);
- MobileNetV2: ``dense`` and the same FLGC forms;
- ``--configs results/STUDY/pareto/*.json``: ``training_form``, ``deployed_split``
  (and ``deployed_dense``/``deployed_best`` with HetConv layers, ``standard_group_conv`` with
  FLGC layers), weights loaded from the ``.pt`` beside the config when there is one.

Inference at batch 1 and 64 (``torch.inference_mode()``); ``--train-step`` adds a training
step (forward + cross-entropy + backward + SGD) at batch 64 for dense, training forms and
standard grouped convs. Every form in both memory formats; ratios are against the dense model
of the same family and width, batch and mode in its faster format, measured round-robin in the
same run. ``mflops`` is the paper count of the trained model (search.evaluation.cost); ``executed_mflops``
what the deployed module runs (ptflops on it: HetConv's split form runs its zero 1x1 block).

    python bench/models.py --quick
    python bench/models.py --configs results/vgg_mixed-cifar10/pareto/*.json --train-step
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from bench._timing import (
    Candidate,
    add_common_arguments,
    add_ratios,
    default_out,
    environment,
    inference_fn,
    load_warning,
    measure_round_robin,
    parse_formats,
    print_table,
    setup_threads,
    summary_rows,
    train_step_fn,
    write_csv,
)
from layers import ChannelGather, FLGConv2d, HetConv2d
from models import Architecture, LayerSpec, build_model, count_gathers, deploy, get_model_family

CSV_COLUMNS = [
    "model",
    "kind",
    "form",
    "shape",
    "param",
    "batch",
    "mflops",
    "flops_ratio",
    "latency_ratio",
    "latency_ms",
    "memory_format",
    "explicit_gathers",
    "mode",
    "fastest_format",
    "reference_ms",
    "executed_mflops",
    "width",
    "note",
    "samples",
    "calls_per_sample",
]
TABLE_COLUMNS = [
    "shape",
    "model",
    "kind",
    "param",
    "form",
    "batch",
    "memory_format",
    "ms_nchw",
    "ms_channels_last",
    "mflops",
    "flops_ratio",
    "latency_ratio",
    "explicit_gathers",
]


def strip_gathers(model: nn.Module) -> nn.Module:
    """A copy of ``model`` without its ChannelGather modules: the same standard convolutions
    (grouped where FLGC was), no permutations; its outputs differ, its cost is the reference."""
    model = copy.deepcopy(model)

    def strip(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.Sequential):
                strip(child)
                setattr(module, name, nn.Sequential(*[m for m in child if not isinstance(m, ChannelGather)]))
            elif isinstance(child, ChannelGather):
                setattr(module, name, nn.Identity())
            else:
                strip(child)

    strip(model)
    assert count_gathers(model) == 0
    return model.eval()


@torch.no_grad()
def randomize_assignments(model: nn.Module, seed: int) -> nn.Module:
    """Learned-looking FLGC groupings (the initial logits are near ties)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FLGConv2d):
            m.in_logits.copy_(torch.randn(m.in_logits.shape, generator=gen))
            m.out_logits.copy_(torch.randn(m.out_logits.shape, generator=gen))
    return model


def executed_mflops(module: nn.Module) -> float:
    from search.evaluation.cost import count_cost

    return count_cost(copy.deepcopy(module).eval()).mflops


class Entry:
    """One model form to time."""

    def __init__(
        self,
        model: str,
        kind: str,
        shape: str,
        param: str,
        form: str,
        module: nn.Module,
        mflops: float,
        width: float,
        trains: bool,
        executed: float | None = None,
        note: str = "",
        num_classes: int = 10,
    ) -> None:
        self.num_classes = num_classes
        self.model, self.kind, self.shape, self.param, self.form = model, kind, shape, param, form
        self.module, self.mflops, self.width, self.trains, self.note = module, mflops, width, trains, note
        self.executed = executed
        self.gathers = count_gathers(module)


def forms_of(
    arch: Architecture, name: str, kind: str, param: str, seed: int, weights: Path | None = None, quick: bool = False
) -> list[Entry]:
    from search.evaluation.cost import architecture_cost

    torch.manual_seed(seed)
    model = randomize_assignments(build_model(arch), seed)
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    shape = f"{arch.model}@{arch.width:g}" + (f"/{arch.num_classes}cls" if arch.num_classes != 10 else "")
    mflops = architecture_cost(arch).mflops
    common = dict(
        model=name, kind=kind, shape=shape, param=param, mflops=mflops, width=arch.width, num_classes=arch.num_classes
    )
    if kind == "dense":
        return [Entry(form="dense", module=model, trains=True, executed=mflops, **common)]
    entries = [Entry(form="training_form", module=model, trains=True, **common)]
    has_hetconv = any(isinstance(m, HetConv2d) and m.part > 1 for m in model.modules())
    has_flgc = any(isinstance(m, FLGConv2d) and m.balanced for m in model.modules())
    split = deploy(model, hetconv_form="split")
    entries.append(
        Entry(
            form="deployed_split" if has_hetconv else "deployed_folded",
            module=split,
            trains=False,
            executed=executed_mflops(split),
            **common,
        )
    )
    if has_hetconv:
        dense_form = deploy(model, hetconv_form="dense")
        entries.append(
            Entry(
                form="deployed_dense", module=dense_form, trains=False, executed=executed_mflops(dense_form), **common
            )
        )
    if has_flgc:
        if kind == "flgc" and not quick:
            unfolded = deploy(model, fold=False)
            entries.append(
                Entry(
                    form="deployed_unfolded",
                    module=unfolded,
                    trains=False,
                    executed=executed_mflops(unfolded),
                    **common,
                )
            )
        # Per layer grouped or dense, whichever makes the whole model faster (chosen at batch 64).
        example = torch.randn(64, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        auto = deploy(model, hetconv_form="auto", flgc_form="auto", example_input=example)
        entries.append(Entry(form="deployed_auto", module=auto, trains=False, executed=executed_mflops(auto), **common))
        standard = strip_gathers(split)
        entries.append(
            Entry(
                form="standard_group_conv", module=standard, trains=True, executed=executed_mflops(standard), **common
            )
        )
    return entries


def uniform_arch(model: str, width: float, spec: LayerSpec | None) -> Architecture:
    slots = get_model_family(model).slots(width)
    return Architecture(model, width, 10, (spec or LayerSpec.dense(),) * len(slots))


def builtin_entries(model: str, args) -> list[Entry]:
    """The dense model and the uniform HetConv (VGG only) and FLGC models of one family."""
    entries = forms_of(uniform_arch(model, args.width, None), model, "dense", "", args.seed)
    if model == "vgg16":
        for p in args.parts:
            arch = uniform_arch(model, args.width, LayerSpec.hetconv(p))
            entries += forms_of(arch, model, "hetconv", f"P={p}", args.seed)
    for g in args.groups:
        arch = uniform_arch(model, args.width, LayerSpec.flgc(g))
        entries += forms_of(arch, model, "flgc", f"G={g}", args.seed, quick=args.quick)
    return entries


def read_configs(paths: list[str]) -> list[tuple[Path, Architecture]]:
    """The exported configs that load (others are skipped with a message: e.g. the
    ``*.retrain.json`` summaries beside them in a pareto folder)."""
    from search.artifacts.retrain import load_config

    configs = []
    for text in paths:
        path = Path(text)
        try:
            configs.append((path, Architecture.from_json(load_config(path)["architecture"])))
        except ValueError as err:
            print(f"skipping {path}: {err}", file=sys.stderr)
    return configs


def config_entries(path: Path, arch: Architecture, seed: int) -> list[Entry]:
    weights = path.with_suffix(".pt")
    try:
        return forms_of(
            arch, path.stem, "config", _compact(arch.summary()), seed, weights if weights.exists() else None
        )
    except RuntimeError as err:  # weights that do not fit the architecture
        print(f"skipping {path}: {str(err).splitlines()[0]}", file=sys.stderr)
        return []


def _compact(summary: str) -> str:
    """``hetconv:2 hetconv:2 flgc:4`` -> ``hetconv:2x2 flgc:4`` (runs of equal layers)."""
    runs: list[list] = []
    for label in summary.split():
        if runs and runs[-1][0] == label:
            runs[-1][1] += 1
        else:
            runs.append([label, 1])
    return " ".join(label if n == 1 else f"{label}x{n}" for label, n in runs)


def measure(entries: list[Entry], args, formats: list[str]) -> list[dict]:
    rows = []
    modes = [("inference", b) for b in args.batches]
    if args.train_step:
        modes.append(("train_step", args.train_batch))
    shapes = list(dict.fromkeys(e.shape for e in entries))
    gen = torch.Generator().manual_seed(args.seed)
    for shape in shapes:
        group = [e for e in entries if e.shape == shape]
        for mode, batch in modes:
            print(f"  {shape} {mode} batch {batch}: {len(group)} forms x {len(formats)} formats ...", flush=True)
            x = torch.randn(batch, 3, 32, 32, generator=gen)
            target = torch.randint(0, 10, (batch,), generator=gen)
            candidates = []
            for e in group:
                if mode == "train_step" and not e.trains:
                    continue
                for fmt in formats:
                    if mode == "inference":
                        fn = inference_fn(e.module, x, fmt)
                    else:
                        fn = train_step_fn(e.module, x, fmt, target=target % e.num_classes)
                    row = {
                        "model": e.model,
                        "kind": e.kind,
                        "form": e.form if mode == "inference" else f"train_step:{e.form}",
                        "shape": e.shape,
                        "param": e.param,
                        "batch": batch,
                        "mflops": e.mflops,
                        "executed_mflops": e.executed if e.executed is not None else math.nan,
                        "explicit_gathers": e.gathers,
                        "memory_format": fmt,
                        "mode": mode,
                        "width": e.width,
                        "note": e.note,
                    }
                    candidates.append(Candidate(fn, row))
            measure_round_robin(candidates, args.repeats, args.warmup)
            for c in candidates:
                rows.append(
                    {**c.row, "latency_ms": c.median_ms, "samples": len(c.samples), "calls_per_sample": c.calls}
                )
            del candidates
    return rows


def add_best_rows(rows: list[dict]) -> list[dict]:
    """``deployed_best``: per model with HetConv, the faster of deployed_split and deployed_dense
    (each in its faster memory format)."""
    best = []
    keys = {(r["model"], r["param"], r["shape"], r["batch"], r["mode"]) for r in rows if r["form"] == "deployed_dense"}
    for key in sorted(keys, key=str):
        same = [
            r
            for r in rows
            if (r["model"], r["param"], r["shape"], r["batch"], r["mode"]) == key
            and r["form"] in ("deployed_split", "deployed_dense")
        ]
        winner = min(same, key=lambda r: r["latency_ms"])
        best.append({**winner, "form": "deployed_best", "note": winner["form"]})
    return rows + best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser, "models")
    parser.add_argument("--width", type=float, default=1.0, help="width of the built-in models (default: 1.0)")
    parser.add_argument(
        "--models",
        default="vgg16,mobilenetv2",
        help="built-in models (default: vgg16,mobilenetv2; 'none': configs only)",
    )
    parser.add_argument("--parts", default=None, help="uniform HetConv parts for VGG (default: 2,4,8; --quick: 4)")
    parser.add_argument("--groups", default=None, help="uniform FLGC groups (default: 2,4,8; --quick: 4)")
    parser.add_argument("--configs", nargs="*", default=[], help="exported configs (results/STUDY/pareto/*.json)")
    parser.add_argument("--batches", default="1,64", help="inference batch sizes (default: 1,64)")
    parser.add_argument("--train-step", action="store_true", help="also time a training step")
    parser.add_argument("--train-batch", type=int, default=64, help="batch of the training step (default: 64)")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    ints = lambda text, default: tuple(int(v) for v in text.split(",")) if text else default  # noqa: E731
    args.batches = ints(args.batches, (1, 64))
    args.parts = ints(args.parts, (4,) if args.quick else (2, 4, 8))
    args.groups = ints(args.groups, (4,) if args.quick else (2, 4, 8))
    args.model_names = [] if args.models == "none" else [m.strip() for m in args.models.split(",") if m.strip()]
    for name in args.model_names:
        try:
            get_model_family(name)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
    setup_threads(args.threads)
    formats = parse_formats(args.formats)
    env = environment()
    print(
        f"model benchmark: torch {env['torch']}, {env['threads']} threads, {args.repeats} repeats "
        f"(medians; ratios within this run only)",
        flush=True,
    )
    warning = load_warning()
    if warning:
        print(warning, file=sys.stderr, flush=True)

    # One model family and width at a time: its dense reference, uniform models and the
    # configs of the same shape are measured round-robin, then freed.
    configs = read_configs(args.configs)
    shapes: dict[tuple[str, float, int], list] = {(m, args.width, 10): [] for m in args.model_names}
    for path, arch in configs:
        shapes.setdefault((arch.model, arch.width, arch.num_classes), []).append((path, arch))
    if not shapes:
        raise SystemExit("error: nothing to measure (no models and no loadable configs)")
    rows: list[dict] = []
    dense_mflops: dict[str, float] = {}
    for (model, width, classes), members in shapes.items():
        if model in args.model_names and width == args.width and classes == 10:
            entries = builtin_entries(model, args)
        else:
            dense = (LayerSpec.dense(),) * len(get_model_family(model).slots(width))
            entries = forms_of(Architecture(model, width, classes, dense), model, "dense", "", args.seed)
        for path, arch in members:
            entries += config_entries(path, arch, args.seed)
        dense_mflops.update({e.shape: e.mflops for e in entries if e.kind == "dense"})
        rows += measure(entries, args, formats)
        del entries

    rows = add_best_rows(rows)
    for r in rows:
        r["flops_ratio"] = r["mflops"] / dense_mflops[r["shape"]]
        r.update(threads=env["threads"], torch=env["torch"], load_start=env["load_start"])
    add_ratios(rows, ("shape", "batch", "mode"), lambda r: r["kind"] == "dense")
    for r in rows:  # the derived best row is its own form, in its winner's format
        if r["form"] == "deployed_best":
            r["fastest_format"] = True
    measured = [r for r in rows if r["form"] != "deployed_best"]
    table = summary_rows(measured, ("shape", "model", "kind", "param", "form", "batch", "mode"))
    table += [r for r in rows if r["form"] == "deployed_best"]
    order = {e: i for i, e in enumerate(dict.fromkeys((r["shape"], r["model"], r["param"]) for r in rows))}
    table.sort(key=lambda r: (r["mode"], r["batch"], order[r["shape"], r["model"], r["param"]]))
    print_table(table, TABLE_COLUMNS, title="\nfaster memory format per form (ms_* = median ms per call)")
    out = write_csv(rows, Path(args.out) if args.out else default_out("models"), CSV_COLUMNS)
    print(f"\n{len(rows)} rows written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
