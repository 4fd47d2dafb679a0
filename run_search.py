#!/usr/bin/env python
"""Command line of the search tool: arguments -> settings -> the command. Nothing else.

    python run_search.py --space vgg_hetconv --budget 50        # search (the default command)
    python run_search.py --preset quick                          # a real search in minutes on a CPU
    python run_search.py spaces                                  # list spaces
    python run_search.py flops --space vgg_hetconv --uniform all # count uniform models
    python run_search.py report --study NAME                     # regenerate report from storage
    python run_search.py export --study NAME                     # export Pareto-optimal configs
    python run_search.py retrain results/STUDY/pareto/trial_12.json
"""

from __future__ import annotations

import argparse
import sys

COMMANDS = ("search", "spaces", "flops", "report", "export", "retrain")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results-dir", default="results", help="output folder (default: results)")
    parser.add_argument(
        "--storage", default=None, help="Optuna storage URL (default: sqlite:///<results-dir>/studies.db)"
    )


def _add_width(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width", type=float, default=None, help="width multiplier of the model (default: the space's, 1.0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_search.py",
        description="Per-layer search of FLGC groups and HetConv parts; Pareto front of accuracy vs MFLOPs.",
    )
    sub = parser.add_subparsers(dest="command")

    flops = sub.add_parser("flops", help="MFLOPs and parameters of uniform models of a space")
    flops.add_argument("--space", required=True, help="space name or space file")
    flops.add_argument("--uniform", default="all", help="a value legal at every layer (e.g. 4), 'dense' or 'all'")
    flops.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    flops.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_width(flops)

    spaces = sub.add_parser("spaces", help="list the spaces: layers, size, MFLOPs range")
    spaces.add_argument("files", nargs="*", help="space files to list too")
    spaces.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_width(spaces)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["search", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)

    from models import ArchitectureError
    from search.commands import flops_rows, print_table, space_rows
    from spaces import SpaceError

    try:
        if args.command == "flops":
            print_table(flops_rows(args.space, args.uniform, args.width, args.classes), args.json)
        elif args.command == "spaces":
            print_table(space_rows(args.width, args.files), args.json)
        else:
            parser.error(f"command {args.command!r} is not available yet")
    except (ArchitectureError, SpaceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
