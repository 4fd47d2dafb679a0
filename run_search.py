#!/usr/bin/env python
"""Command line of the search tool: arguments -> settings -> the command. Nothing else.

python run_search.py --space vgg_hetconv --budget 50        # search (the default command)
python run_search.py --preset quick                          # a real search in minutes on a CPU
python run_search.py spaces                                  # list spaces
python run_search.py flops --space vgg_hetconv --uniform all # count uniform models
python run_search.py report --study NAME                     # regenerate report from storage
python run_search.py export --study NAME                     # export Pareto-optimal configs
python run_search.py retrain results/STUDY/pareto/trial_12.json
python run_search.py deploy results/STUDY/pareto/trial_12.json --onnx
"""

from __future__ import annotations

import argparse
import os
import sys

COMMANDS = ("search", "spaces", "flops", "report", "export", "retrain", "deploy")


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line (``error: ...``) and exit code 2, like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        say(f"error: {message} (see {self.prog} --help)")
        self.exit(2)


def say(line: str, secrets: list[str] | None = None) -> None:
    """One line on stderr, passwords scrubbed, and never an encoding error (arguments may hold
    bytes that are not UTF-8)."""
    from search.settings import scrub

    # Control characters (also those str.splitlines breaks at) are shown escaped: one line.
    text = (
        "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in scrub(line, secrets or []))
        + "\n"
    )
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    sys.stderr.write(text.encode(encoding, "backslashreplace").decode(encoding))
    sys.stderr.flush()


def _n(field: str):
    """The argparse ``type`` of a numeric option: its rule in the validation table."""
    from search.settings import NUMBERS

    return NUMBERS[field].parse


def _add_common(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--results-dir", default="results", help="output folder: storage, reports, exported configs (default: results)"
    )
    parser.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL, e.g. postgresql://user:pw@host/db for several machines; only the default one "
        "is created (default: sqlite:///<results-dir>/studies.db)",
    )


def _add_width(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--width",
        type=_n("width"),
        default=None,
        help="width multiplier of the model, channels rounded to multiples of 8 (default: the space's, 1.0)",
    )


def _add_search_options(parser: argparse.ArgumentParser) -> None:
    from search.settings import CUDA_GRAPH_MODES, PRESETS, SAMPLERS, TUNABLE, TrainingSettings

    d = TrainingSettings()
    g = parser.add_argument_group("what to search")
    g.add_argument(
        "--space", default="vgg_hetconv", help="built-in space name or a .yaml/.json space file (default: vgg_hetconv)"
    )
    g.add_argument(
        "--budget",
        type=_n("budget"),
        default=50,
        help="finished trials in the study; re-running continues up to it (default: 50)",
    )
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="quick: digits, width 0.25, 5 epochs, batch 64 (a real search in minutes on a CPU); "
        "cifar: CIFAR-10, width 1, 15 epochs (for GPUs). Explicit options override it",
    )
    _add_width(g)
    g.add_argument(
        "--objectives",
        default="accuracy,mflops",
        help="comma-separated, accuracy plus any of mflops, params, latency (default: accuracy,mflops)",
    )
    g.add_argument(
        "--latency",
        default="measured",
        help="latency objective: measured (time each deployed candidate) "
        "or table (per-layer lookup table, built once per device and cached in <results-dir>/latency_tables/) "
        "(default: measured)",
    )
    g.add_argument(
        "--latency-batch", type=_n("latency_batch"), default=1, help="batch size of the latency objective (default: 1)"
    )
    g.add_argument(
        "--max-mflops", type=_n("max_mflops"), default=None, help="FLOPs ceiling: candidates above it are not trained"
    )
    g.add_argument(
        "--tune",
        default="",
        help="also sweep training hyperparameters, comma-separated, each once: "
        + ", ".join(f"{name} ({kind} {bounds[0]:g}..{bounds[-1]:g})" for name, (kind, bounds) in TUNABLE.items()),
    )
    g.add_argument(
        "--baselines",
        action="store_const",
        const=True,
        default=None,
        help="queue the uniform configurations of the space (dense, every layer P=2, P=4, ...) and its published "
        "models as ordinary trials counted in the budget (with --strategy one-shot: scored first), drawn as their own "
        "series in the report (default: queued when they take at most half of --budget)",
    )
    g.add_argument(
        "--no-baselines", dest="baselines", action="store_const", const=False, help="never queue the baselines"
    )
    g.add_argument(
        "--confirm",
        type=_n("confirm"),
        default=2,
        metavar="R",
        help="after the budget, train every configuration on the front (and those within its noise) R more "
        "times with new seeds, so that the front is made of means over R+1 runs; 0: single runs (default: 2)",
    )
    g.add_argument(
        "--race",
        type=_n("race"),
        default=3,
        metavar="K",
        help="after --confirm, a front member whose lead over the next cheaper member is within the noise gets "
        "more runs, one at a time, until the lead is resolved or it has R+1+K runs; 0: no racing (default: 3)",
    )
    g.add_argument(
        "--strategy",
        default="train-each",
        help="train-each (train every candidate) or one-shot (a weight-sharing supernet scores candidates "
        "in seconds; then --retrain-top trains the best from scratch) (default: train-each)",
    )
    g.add_argument(
        "--retrain-top",
        type=_n("retrain_top"),
        default=3,
        help="one-shot: configurations of the front retrained from scratch (default: 3)",
    )
    g.add_argument(
        "--supernet-epochs",
        type=_n("supernet_epochs"),
        default=None,
        help="one-shot: supernet training epochs (default: 4 x --epochs)",
    )
    g.add_argument(
        "--early-stop",
        default="none",
        help="mo-asha: stop trials that cannot reach the front, at rungs; none: train every trial to the "
        "end; auto: mo-asha when --epochs is above --min-epochs (default: none)",
    )
    g.add_argument("--min-epochs", type=_n("min_epochs"), default=1, help="first rung of --early-stop (default: 1)")
    g.add_argument(
        "--eta", type=_n("eta"), default=3, help="--early-stop keeps the best 1/eta at each rung (default: 3)"
    )

    g = parser.add_argument_group("data and training")
    g.add_argument("--dataset", default=None, help=f"cifar10, cifar100, digits or digits32 (default: {d.dataset})")
    g.add_argument("--data-dir", default=None, help=f"where the CIFAR files are or go (default: {d.data_dir})")
    g.add_argument(
        "--epochs", type=_n("epochs"), default=None, help=f"training epochs per candidate (default: {d.epochs})"
    )
    g.add_argument("--batch-size", type=_n("batch_size"), default=None, help=f"(default: {d.batch_size})")
    g.add_argument(
        "--lr",
        type=_n("lr"),
        default=None,
        help=f"peak learning rate: SGD, Nesterov momentum, linear warm-up, cosine decay (default: {d.lr})",
    )
    g.add_argument("--momentum", type=_n("momentum"), default=None, help=f"Nesterov momentum (default: {d.momentum})")
    g.add_argument(
        "--weight-decay",
        type=_n("weight_decay"),
        default=None,
        help=f"(default: {d.weight_decay}; never on FLGC assignment logits, biases and BatchNorm)",
    )
    g.add_argument(
        "--label-smoothing", type=_n("label_smoothing"), default=None, help=f"(default: {d.label_smoothing})"
    )
    g.add_argument(
        "--warmup-epochs",
        type=_n("warmup_epochs"),
        default=None,
        help=f"linear warm-up before the cosine decay (default: {d.warmup_epochs})",
    )
    g.add_argument(
        "--val-size",
        type=_n("val_size"),
        default=None,
        help="validation images held out of the training set (default: 5000 CIFAR, 20%% digits, digits32's fixed "
        "split; given for digits32 it re-splits training and validation images at random)",
    )
    g.add_argument(
        "--split-seed",
        type=_n("split_seed"),
        default=None,
        help=f"seed of the train/validation split (default: {d.split_seed})",
    )
    g.add_argument(
        "--device",
        default=None,
        help="auto (CUDA if present: mixed precision, channels_last, data kept on the GPU), cpu, cuda, cuda:1 ... "
        "(default: auto)",
    )
    g.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    g.add_argument(
        "--cuda-graphs",
        default=None,
        help=f"{', '.join(CUDA_GRAPH_MODES)}: on CUDA, replay each training step from a captured CUDA graph "
        "where that measures faster, wherever possible, or never; the same result (default: auto)",
    )
    g.add_argument("--threads", type=_n("threads"), default=None, help="torch CPU threads per trial (default: torch's)")

    g = parser.add_argument_group("driver and storage")
    g.add_argument(
        "--sampler",
        default=None,
        help=f"{', '.join(SAMPLERS)} (gp needs scipy, fastest with greenlet) (default: tpe; nsga2 with --strategy one-shot)",
    )
    g.add_argument(
        "--seed",
        type=_n("seed"),
        default=0,
        help="seed of the sampler and of every trial's training (trial seed = seed * 100003 + trial number) (default: 0)",
    )
    g.add_argument("--backend", default="optuna", help="optuna (one machine) or ray (cluster) (default: optuna)")
    g.add_argument("--study-name", default=None, help="(default: <space>-<dataset>)")
    g.add_argument(
        "--max-failures",
        type=_n("max_failures"),
        default=5,
        help="stop (exit code 1, study kept) after this many failed trials in a row (default: 5)",
    )
    g.add_argument(
        "--workers",
        type=_n("workers"),
        default=1,
        help="worker processes on this machine, one study, each on its own GPU where there are several; never more "
        "than --budget (default: 1)",
    )
    g.add_argument(
        "--trials-per-gpu",
        type=_n("trials_per_gpu"),
        default=None,
        help="on CUDA: trials trained at once per GPU, one worker process each; 1 turns packing off, never more "
        "than --budget (default: 4 where --workers is 1, the Optuna backend trains each candidate and --device is "
        "auto or cuda; else 1)",
    )
    g.add_argument(
        "--checkpoint-every",
        type=_n("checkpoint_every"),
        default=0,
        help="save a trial's training state every K epochs; a retried trial resumes from it (default: off)",
    )
    g.add_argument("--no-report", action="store_true", help="do not write the report and exports at the end")
    g.add_argument("--quiet", action="store_true", help="no progress lines")

    g = parser.add_argument_group("ray backend (--backend ray)")
    g.add_argument(
        "--address", default=None, help="join this Ray cluster ('auto' or HEAD:6379); default: start a local Ray"
    )
    g.add_argument(
        "--ray-storage",
        default=None,
        help="Ray's results folder or URI, shared by all nodes (default: <results-dir>/<study>/ray)",
    )
    g.add_argument(
        "--cpus-per-trial", type=_n("cpus_per_trial"), default=1.0, help="CPUs Ray reserves per trial (default: 1)"
    )
    g.add_argument(
        "--gpus-per-trial",
        type=_n("gpus_per_trial"),
        default=None,
        help="GPUs per trial, fractional packs trials (default: 1 if the cluster has GPUs, else 0)",
    )
    g.add_argument(
        "--max-concurrent",
        type=_n("max_concurrent"),
        default=None,
        help="trials running at once (default: as resources allow)",
    )
    g.add_argument(
        "--ray-retries", type=_n("ray_retries"), default=2, help="Ray-level retries of a crashed trial (default: 2)"
    )
    _add_common(parser.add_argument_group("output and storage"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="run_search.py",
        description="Per-layer search of FLGC groups and HetConv parts; Pareto front of accuracy vs MFLOPs.",
        epilog="Without a command, the options are those of 'search' (the default): see every search option "
        "with 'run_search.py search --help', and a command's own with 'run_search.py COMMAND --help'.",
    )
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    search = sub.add_parser("search", help="run or continue a search (the default command)")
    _add_search_options(search)

    flops = sub.add_parser("flops", help="MFLOPs and parameters of uniform models of a space")
    flops.add_argument("--space", required=True, help="space name or space file")
    flops.add_argument("--uniform", default="all", help="a value legal at every layer (e.g. 4), 'dense' or 'all'")
    flops.add_argument("--classes", type=_n("classes"), default=10, help="number of classes (default: 10)")
    flops.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_width(flops)

    spaces = sub.add_parser("spaces", help="list the spaces: layers, size, MFLOPs range")
    spaces.add_argument("files", nargs="*", help="space files to list too")
    spaces.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_width(spaces)

    for name, text in (
        ("report", "write report.html, trials.csv, pareto.csv from the storage"),
        ("export", "write one JSON config per Pareto-optimal trial"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--study", required=True, help="study name (see the dashboard or run.json)")
        _add_common(cmd)

    retrain = sub.add_parser("retrain", help="train an exported config on the full training set, report test accuracy")
    retrain.add_argument("config", help="an exported JSON config (results/<study>/pareto/*.json)")
    retrain.add_argument(
        "--epochs", type=_n("epochs"), default=None, help="training epochs (default: the config's training epochs)"
    )
    retrain.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: auto)")
    retrain.add_argument("--data-dir", default=None, help="where the data set is or goes (default: the config's)")

    deploy = sub.add_parser("deploy", help="export an exported config's inference model (TorchScript, ONNX)")
    deploy.add_argument("config", help="an exported JSON config")
    deploy.add_argument(
        "--weights", default=None, help="state dict to load (default: the .pt 'retrain' saved beside the config)"
    )
    deploy.add_argument("--onnx", action="store_true", help="also export ONNX (needs the onnx and onnxscript packages)")
    deploy.add_argument(
        "--hetconv-form",
        default="auto",
        choices=("auto", "split", "dense"),
        help="HetConv as grouped KxK + 1x1 (split), one KxK conv (dense), or per layer the faster "
        "of the two on this machine (auto) (default: auto)",
    )
    deploy.add_argument(
        "--flgc-form",
        default="auto",
        choices=("auto", "grouped", "dense"),
        help="FLGC as a grouped conv with its permutations folded (grouped), one conv with zeros "
        "outside the groups (dense), or per layer whichever makes the model faster on this "
        "machine once unfoldable channel gathers are counted (auto) (default: auto)",
    )
    deploy.add_argument(
        "--batch",
        type=_n("batch"),
        default=1,
        help="batch size the auto forms are timed at: the batch you will serve (default: 1)",
    )
    return parser


def settings_from_args(args: argparse.Namespace):
    """Explicit options win over the preset, the preset over the defaults."""
    from search.settings import PRESETS, Settings, TrainingSettings

    preset = PRESETS.get(args.preset or "", {})
    training_keys = (
        "dataset",
        "data_dir",
        "epochs",
        "batch_size",
        "lr",
        "momentum",
        "weight_decay",
        "label_smoothing",
        "warmup_epochs",
        "val_size",
        "split_seed",
        "device",
        "threads",
        "cuda_graphs",
    )
    training = {
        k: getattr(args, k) if getattr(args, k) is not None else preset[k]
        for k in training_keys
        if getattr(args, k) is not None or k in preset
    }
    training["amp"] = not args.no_amp
    width = args.width if args.width is not None else preset.get("width")
    split = lambda text: tuple(x.strip() for x in text.split(",") if x.strip())  # noqa: E731
    return Settings(
        space=args.space,
        budget=args.budget,
        width=width,
        training=TrainingSettings(**training),
        tune=split(args.tune),
        objectives=split(args.objectives),
        sampler=args.sampler or ("nsga2" if args.strategy == "one-shot" else "tpe"),
        seed=args.seed,
        backend=args.backend,
        results_dir=args.results_dir,
        storage=args.storage,
        study_name=args.study_name,
        max_mflops=args.max_mflops,
        baselines=args.baselines,
        confirm=args.confirm,
        race=args.race,
        preset=args.preset,
        max_failures=args.max_failures,
        quiet=args.quiet,
        ray_address=args.address,
        ray_storage=args.ray_storage,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent,
        ray_retries=args.ray_retries,
        workers=args.workers,
        trials_per_gpu=args.trials_per_gpu,
        checkpoint_every=args.checkpoint_every,
        early_stop=args.early_stop,
        min_epochs=args.min_epochs,
        eta=args.eta,
        latency=args.latency,
        latency_batch=args.latency_batch,
        strategy=args.strategy,
        retrain_top=args.retrain_top,
        supernet_epochs=args.supernet_epochs,
    )


def run(args: argparse.Namespace) -> int:
    from search import commands

    if args.command == "flops":
        commands.print_table(commands.flops_rows(args.space, args.uniform, args.width, args.classes), args.json)
    elif args.command == "spaces":
        commands.print_spaces(commands.space_rows(args.width, args.files), args.json)
    elif args.command == "search":
        commands.search(settings_from_args(args), write_report=not args.no_report)
    elif args.command == "report":
        commands.report(args.study, args.storage, args.results_dir)
    elif args.command == "export":
        commands.export(args.study, args.storage, args.results_dir)
    elif args.command == "retrain":
        commands.retrain(args.config, epochs=args.epochs, device=args.device, data_dir=args.data_dir)
    elif args.command == "deploy":
        commands.deploy_config(args.config, args.weights, args.onnx, args.hetconv_form, args.flgc_form, args.batch)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["search", *argv]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error, already printed as one line
        return int(stop.code or 0)
    from search.errors import USER_ERRORS, SearchAborted
    from search.quiet import quiet_libraries
    from search.settings import url_secrets

    quiet_libraries()
    # Passwords of storage URLs never reach the terminal, whatever message carries them.
    secrets = url_secrets(*(getattr(args, name, None) for name in ("storage", "ray_storage", "address")))
    try:
        return run(args)
    except USER_ERRORS as err:
        say(f"error: {err}", secrets)
        if getattr(err, "ends_process", False):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        return 2
    except SearchAborted as err:
        say(f"error: {err}", secrets)
        return 1
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (silences the flush at exit)
        return 0
    except OSError as err:  # the file system, not the input: a full disk, a read-only or wrong-kind path
        path = err.filename2 or err.filename  # a rename's target, not its temporary source
        where = f" ({path})" if path else ""
        say(
            f"error: {err.strerror or err}{where}; free space or fix that path and run the same command "
            "again (the study is kept)",
            secrets,
        )
        return 1
    except KeyboardInterrupt:
        print("interrupted: the study is kept; run the same command again to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
