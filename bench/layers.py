#!/usr/bin/env python
"""Layer benchmark: HetConv and FLGC, training and deployed forms, against a dense conv.

Shapes are the searchable convolutions of VGG-16 (3x3) and MobileNetV2's pointwise convs
(1x1; HetConv is not defined for 1x1 kernels, so those shapes get FLGC only). For each shape:

- ``dense``: ``nn.Conv2d``, the reference (in its faster memory format);
- HetConv, P in 2..32 where legal: ``training_form`` (HetConv2d), ``deployed_split``
  (grouped KxK + 1x1, :class:`layers.ConvSum`), ``deployed_dense`` (one KxK conv) and
  ``loop_reference`` (a per-filter loop, batch 1 inference only, few repeats);
- FLGC, G in 2..16 where legal: ``training_form`` (FLGConv2d, masked dense conv),
  ``deployed_folded`` (the standard grouped conv alone: inside a network the neighbouring
  layers absorb the permutations), ``deployed_gathers`` (``fold=False``: gather + grouped conv
  + gather) and ``standard_group_conv`` (a fresh ``nn.Conv2d(groups=G)``);
- inference at batch 1 and 64, and a training step at batch 64 (``train_step:<form>``, for
  dense, the training forms and the standard grouped conv), every form in both memory formats.

Ratios are within this run: ``latency_ratio`` = latency / dense latency of the same shape,
batch and mode (dense in its faster format). ``flops_ratio`` is the paper's effective MACs
ratio; ``executed_flops_ratio`` the MACs the form really runs (HetConv's 1x1 branch runs its
zero block, FLGC's training form runs the whole masked conv).

    python bench/layers.py --quick
    python bench/layers.py --shapes vgg --parts 4 --groups 4 --no-train-step
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
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
from layers import FLGConv2d, HetConv2d

# (C_in, C_out, D, kernel, where)
VGG_SHAPES = [
    (64, 64, 32, 3, "vgg16"),
    (128, 128, 16, 3, "vgg16"),
    (256, 256, 8, 3, "vgg16"),
    (512, 512, 4, 3, "vgg16"),
    (512, 512, 2, 3, "vgg16"),
]
MBV2_SHAPES = [
    (24, 144, 32, 1, "mbv2_expand"),
    (144, 24, 32, 1, "mbv2_project"),
    (64, 384, 8, 1, "mbv2_expand"),
    (384, 64, 8, 1, "mbv2_project"),
    (960, 160, 4, 1, "mbv2_project"),
]
PARTS = (2, 4, 8, 16, 32)
GROUPS = (2, 4, 8, 16)
QUICK_SHAPES = [VGG_SHAPES[1], VGG_SHAPES[3], MBV2_SHAPES[1]]

CSV_COLUMNS = [
    "kind",
    "form",
    "shape",
    "param",
    "batch",
    "flops_ratio",
    "latency_ratio",
    "latency_ms",
    "memory_format",
    "mode",
    "fastest_format",
    "reference_ms",
    "executed_flops_ratio",
    "mflops",
    "source",
    "kernel",
    "rel_error",
    "samples",
    "calls_per_sample",
]
TABLE_COLUMNS = [
    "shape",
    "kind",
    "param",
    "form",
    "batch",
    "memory_format",
    "ms_nchw",
    "ms_channels_last",
    "flops_ratio",
    "latency_ratio",
]


class LoopReferenceHetConv(nn.Module):
    """HetConv as a per-filter loop (the obviously-correct, slow form), in the block layout of
    :class:`HetConv2d` with its weights: filter i of block g convolves channel block g with its
    KxK kernels and the other channels with its 1x1 kernels."""

    def __init__(self, layer: HetConv2d) -> None:
        super().__init__()
        n, m, p = layer.out_channels, layer.in_channels, layer.part
        self.part, self.stride, self.padding = p, layer.stride, layer.padding
        self.per_out, self.per_in = n // p, m // p
        with torch.no_grad():
            big, small = layer.parts()
            assert small is not None  # P > 1
            self.big = [big[i : i + 1].clone() for i in range(n)]
            self.rest = [
                torch.cat([torch.arange(0, g * self.per_in), torch.arange((g + 1) * self.per_in, m)]) for g in range(p)
            ]
            self.small = [small[i : i + 1, self.rest[i // self.per_out]].clone() for i in range(n)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = [x[:, g * self.per_in : (g + 1) * self.per_in] for g in range(self.part)]
        rests = [x.index_select(1, r) for r in self.rest]
        out = []
        for i, (big, small) in enumerate(zip(self.big, self.small)):
            g = i // self.per_out
            y = F.conv2d(blocks[g], big, None, self.stride, self.padding)
            out.append(y + F.conv2d(rests[g], small, None, self.stride))
        return torch.cat(out, dim=1)


def _legal(values, cin: int, cout: int) -> list[int]:
    return [v for v in values if cin % v == 0 and cout % v == 0]


@torch.no_grad()
def _rel_error(module: nn.Module, reference: nn.Module, x: torch.Tensor) -> float:
    expected = reference.eval()(x)
    return float((module.eval()(x) - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def layer_forms(cin: int, cout: int, k: int, parts, groups, seed: int):
    """(kind, param, form, module, flops_ratio, executed_flops_ratio, trains, reference_module)."""
    torch.manual_seed(seed)
    forms = [("dense", "", "dense", nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), 1.0, 1.0, True, None)]
    if k > 1:
        for p in _legal(parts, cin, cout):
            het = HetConv2d(cin, cout, p, k)
            effective = 1 / p + (1 - 1 / p) / k**2
            executed = 1 / p + 1 / k**2  # the 1x1 branch runs over all channels, its zero block too
            param = f"P={p}"
            forms += [
                ("hetconv", param, "training_form", het, effective, executed, True, None),
                ("hetconv", param, "deployed_split", het.deploy("split"), effective, executed, False, het),
                ("hetconv", param, "deployed_dense", het.deploy("dense"), effective, 1.0, False, het),
                ("hetconv", param, "loop_reference", LoopReferenceHetConv(het), effective, effective, False, het),
            ]
    for g in _legal(groups, cin, cout):
        flgc = FLGConv2d(cin, cout, g, k)
        with torch.no_grad():  # a learned (non-trivial) grouping
            flgc.in_logits.normal_()
            flgc.out_logits.normal_()
        deployed = flgc.eval().deploy()  # Sequential(gather, grouped conv, gather)
        param = f"G={g}"
        forms += [
            ("flgc", param, "training_form", flgc, 1 / g, 1.0, True, None),
            ("flgc", param, "deployed_folded", deployed[1], 1 / g, 1 / g, False, None),
            ("flgc", param, "deployed_gathers", deployed, 1 / g, 1 / g, False, flgc),
            (
                "flgc",
                param,
                "standard_group_conv",
                nn.Conv2d(cin, cout, k, padding=k // 2, groups=g, bias=False),
                1 / g,
                1 / g,
                True,
                None,
            ),
        ]
    return forms


def bench_shape(shape, args, formats, parts, groups) -> list[dict]:
    cin, cout, d, k, source = shape
    label = f"{cin}x{cout}@{d}"
    forms = layer_forms(cin, cout, k, parts, groups, args.seed)
    dense_macs = cin * cout * k * k * d * d
    gen = torch.Generator().manual_seed(args.seed)
    rows: list[dict] = []
    errors = {}
    x1 = torch.randn(1, cin, d, d, generator=gen)
    for kind, param, form, module, _, _, _, reference in forms:
        if reference is not None:
            errors[kind, param, form] = _rel_error(module, reference, x1)
    modes = [("inference", b) for b in args.batches]
    if not args.no_train_step:
        modes.append(("train_step", args.train_batch))
    for mode, batch in modes:
        x = torch.randn(batch, cin, d, d, generator=gen)
        candidates = []
        for kind, param, form, module, flops, executed, trains, _ in forms:
            if mode == "train_step" and not trains:
                continue
            if form == "loop_reference" and batch != 1:
                continue
            for fmt in formats if form != "loop_reference" else ["nchw"]:
                if mode == "inference":
                    fn = inference_fn(module, x, fmt)
                else:
                    fn = train_step_fn(module, x, fmt, input_grad=True)
                row = {
                    "kind": kind,
                    "form": form if mode == "inference" else f"train_step:{form}",
                    "shape": label,
                    "param": param,
                    "batch": batch,
                    "flops_ratio": flops,
                    "executed_flops_ratio": executed,
                    "memory_format": fmt,
                    "mode": mode,
                    "mflops": dense_macs * flops / 1e6,
                    "source": source,
                    "kernel": k,
                    "rel_error": errors.get((kind, param, form), math.nan),
                }
                repeats = min(3, args.repeats) if form == "loop_reference" else None
                candidates.append(Candidate(fn, row, repeats=repeats))
        measure_round_robin(candidates, args.repeats, args.warmup)
        for c in candidates:
            rows.append({**c.row, "latency_ms": c.median_ms, "samples": len(c.samples), "calls_per_sample": c.calls})
    return rows


def select_shapes(text: str | None, quick: bool) -> list[tuple]:
    if text is None:
        return QUICK_SHAPES if quick else VGG_SHAPES + MBV2_SHAPES
    chosen = []
    for item in text.split(","):
        item = item.strip()
        if item == "vgg":
            chosen += VGG_SHAPES
        elif item == "mbv2":
            chosen += MBV2_SHAPES
        else:  # CINxCOUT@D
            matches = [s for s in VGG_SHAPES + MBV2_SHAPES if f"{s[0]}x{s[1]}@{s[2]}" == item]
            if not matches:
                raise SystemExit(f"error: unknown shape {item!r}; use vgg, mbv2 or CINxCOUT@D of a listed shape")
            chosen += matches
    return list(dict.fromkeys(chosen))


def _ints(text: str | None, default) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",")) if text else tuple(default)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser, "layers")
    parser.add_argument(
        "--shapes", default=None, help="vgg, mbv2 or CINxCOUT@D, comma-separated (default: all; --quick: 3)"
    )
    parser.add_argument("--parts", default=None, help=f"HetConv parts (default: {PARTS}; --quick: 4)")
    parser.add_argument("--groups", default=None, help=f"FLGC groups (default: {GROUPS}; --quick: 4)")
    parser.add_argument("--batches", default="1,64", help="inference batch sizes (default: 1,64)")
    parser.add_argument("--train-batch", type=int, default=64, help="batch of the training step (default: 64)")
    parser.add_argument("--no-train-step", action="store_true", help="inference only")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 15)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.batches = _ints(args.batches, ())
    setup_threads(args.threads)
    formats = parse_formats(args.formats)
    parts = _ints(args.parts, (4,) if args.quick else PARTS)
    groups = _ints(args.groups, (4,) if args.quick else GROUPS)
    shapes = select_shapes(args.shapes, args.quick)
    env = environment()
    print(
        f"layer benchmark: torch {env['torch']}, {env['threads']} threads, {args.repeats} repeats "
        f"(medians; ratios within this run only)",
        flush=True,
    )
    warning = load_warning()
    if warning:
        print(warning, file=sys.stderr, flush=True)

    rows: list[dict] = []
    for shape in shapes:
        print(f"  {shape[0]}x{shape[1]}@{shape[2]} k{shape[3]} ({shape[4]}) ...", flush=True)
        rows += bench_shape(shape, args, formats, parts, groups)
    for r in rows:
        r.update(threads=env["threads"], torch=env["torch"], load_start=env["load_start"])
    add_ratios(rows, ("shape", "kernel", "batch", "mode"), lambda r: r["kind"] == "dense")
    table = summary_rows(rows, ("shape", "kind", "param", "form", "batch", "mode"))
    print_table(table, TABLE_COLUMNS, title="\nfaster memory format per form (ms_* = median ms per call)")
    out = write_csv(rows, Path(args.out) if args.out else default_out("layers"), CSV_COLUMNS)
    print(f"\n{len(rows)} rows written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
