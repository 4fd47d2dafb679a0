"""Hostile and careless input through the command line, in-process (``run_search.main``):
every bad value of every option and config field ends with exit code 2 and ONE ``error:``
line (no traceback), before anything is written: the study is unchanged, no storage, folder
or output file appears. Passwords of storage URLs never appear in anything the tool prints
or writes.

In-process calls cost milliseconds (tests/test_bad_input_cli.py proves the same contract through
real subprocesses for a smaller table). Three parts:

- ``NUMERIC``: generated from the parser itself: every numeric option of every command gets
  NaN, infinities, text and values just outside its range.
- ``CASES``: the named cases (choices, files, storage, configs, weights, ...), and a check
  that the two tables together cover every option of every command.
- hypothesis: random argv and random space files; every outcome is exit 0 or one error line
  with exit 2, and nothing is created on exit 2. A search that passes validation is not
  run (``commands.run_search`` is replaced by a recorder), so nothing trains.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg_server import postgres_url  # noqa: E402,F401  (the session fixture)
from test_bad_input_cli import STUDY, run_in_process, study_snapshot  # noqa: E402

import run_search  # noqa: E402
from search import commands  # noqa: E402
from search.settings import NUMBERS, Number, mask_url, url_secrets  # noqa: E402

TINY = [
    "--preset",
    "quick",
    "--epochs",
    "1",
    "--threads",
    "1",
    "--confirm",
    "0",
    "--budget",
    "1",
    "--no-report",
    "--quiet",
]
PASSWORD = "S3cr3t-pw_7f2a"  # noqa: S105  (a test value, grepped for in every output)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def one_error_line(self) -> str:
        lines = [line for line in self.err.splitlines() if line.strip()]
        shown = f"exit {self.code}\n--- stderr ---\n{self.err}--- stdout ---\n{self.out}"
        assert "Traceback" not in self.err, shown
        assert self.code == 2, shown
        assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0][7:].strip(), shown
        return lines[0]


def cli(argv: list[str], cwd: Path) -> Result:
    proc = run_in_process(argv, cwd)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A real one-trial study, made in-process (digits, width 0.25, one epoch)."""
    base = tmp_path_factory.mktemp("hostile_template")
    result = cli(["search", *TINY, "--results-dir", str(base / "results")], base)
    assert result.code == 0, result.err
    assert study_snapshot(base / "results" / "studies.db")["trials"] == {STUDY: 1}
    return base / "results"


@pytest.fixture
def workdir(tmp_path: Path, template: Path) -> Path:
    """A case folder holding a copy of the template results (``results/``) and a valid config."""
    shutil.copytree(template, tmp_path / "results")
    (tmp_path / "ok.json").write_text(_config([HET2] * 12))
    return tmp_path


# ---------------------------------------------------------------------------- helpers

HET2 = {"type": "hetconv", "part": 2}


def _config(layers: list, training: object = None, num_classes: int = 10, seed: object = 0) -> str:
    arch = {"model": "vgg16", "width": 0.25, "num_classes": num_classes, "layers": layers}
    recipe = {"dataset": "digits", "epochs": 1} if training is None else training
    return json.dumps({"format": "flgc-hetconv-nas/config/v1", "architecture": arch, "training": recipe, "seed": seed})


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = run_search.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _rule(action: argparse.Action) -> Number | None:
    owner = getattr(action.type, "__self__", None)
    return owner if isinstance(owner, Number) else None


# Arguments a command needs besides the option under test ("{dir}": the case folder).
REQUIRED = {
    "search": [*TINY, "--results-dir", "{dir}/results"],
    "flops": ["--space", "vgg_hetconv"],
    "spaces": [],
    "report": ["--study", STUDY, "--results-dir", "{dir}/results"],
    "export": ["--study", STUDY, "--results-dir", "{dir}/results"],
    "retrain": ["{dir}/ok.json"],
    "deploy": ["{dir}/ok.json"],
}


def _bad_values(rule: Number) -> list[str]:
    values = ["nan", "inf", "-inf", "many", "", "1" + "0" * 400]  # the last: an int beyond float's range
    step = 1 if rule.kind is int else 1e-9
    if rule.low is not None:
        values.append(str(rule.low if rule.low_open else rule.low - step))
    if rule.high is not None:
        values.append(str(rule.high if rule.high_open else rule.high + step))
    if rule.kind is int:
        values.append("1.5")
    return values


NUMERIC = [
    (command, option, value)
    for command, parser in _subparsers().items()
    for action in parser._actions
    if (rule := _rule(action)) is not None
    for option in action.option_strings[:1]
    for value in _bad_values(rule)
]


def _fill(args: list[str] | tuple[str, ...], folder: Path) -> list[str]:
    return [a.replace("{dir}", str(folder)) for a in args]


def _db_state(folder: Path) -> dict | None:
    db = folder / "results" / "studies.db"
    return study_snapshot(db) if db.is_file() else None


def check_refused(argv: list[str], folder: Path, hint: str = "") -> str:
    """Run a bad command in ``folder``: one error line naming ``hint``; the study and the
    folder's files exactly as before."""
    before_state, before_files = _db_state(folder), tree(folder)
    line = cli(argv, folder).one_error_line()
    assert hint in line, f"{hint!r} not in {line!r}"
    assert _db_state(folder) == before_state, "the study changed"
    assert tree(folder) == before_files, f"files appeared or vanished: {tree(folder) ^ before_files}"
    return line


# ---------------------------------------------------------------------------- numeric options


def test_every_command_has_numeric_cases():
    assert {c for c, _, _ in NUMERIC} >= {"search", "flops", "spaces", "retrain", "deploy"}
    assert len({(c, o) for c, o, _ in NUMERIC}) >= 30


def test_every_bad_number_of_every_option_is_refused(workdir: Path):
    """NaN, infinities, text and out-of-range values, for every numeric option (in one test:
    each case takes milliseconds, one copy of the study serves them all)."""
    failures = []
    for command, option, value in NUMERIC:
        argv = [command, *_fill(REQUIRED[command], workdir), f"{option}={value}"]
        try:
            check_refused(argv, workdir, hint=option)
        except AssertionError as err:
            failures.append(f"{' '.join(argv)}: {err}")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------- named cases


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # after the command; "{dir}" is the case folder
    hint: str
    command: str = "search"
    files: dict[str, str | bytes] = field(default_factory=dict)


def _bomb() -> str:
    lines, previous = ["a: &a [x, x, x, x, x, x, x, x, x]"], "a"
    for i in range(1, 9):
        lines.append(f"b{i}: &b{i} [{', '.join([f'*{previous}'] * 9)}]")
        previous = f"b{i}"
    return "model: vgg16\nchoices: [dense]\ndescription:\n" + "".join(f"  {line}\n" for line in lines)


SPACE = 'model: vgg16\nchoices: [dense, "hetconv:2"]\n'
PG = f"postgresql://nas:{PASSWORD}@127.0.0.1:1/db"

CASES = [
    # -- named choices and text options of search
    Case("preset", ("--preset", "fast"), "--preset"),
    Case("objectives", ("--objectives", "accuracy,accuracy"), "--objectives"),
    Case("tune", ("--tune", "momentum"), "momentum"),
    Case("latency", ("--latency", "guess"), "--latency"),
    Case("strategy", ("--strategy", "evolution"), "--strategy"),
    Case("early-stop", ("--early-stop", "always"), "--early-stop"),
    Case("dataset", ("--dataset", "mnist"), "mnist"),
    Case("sampler", ("--sampler", "cmaes"), "cmaes"),
    Case("backend", ("--backend", "dask"), "dask"),
    Case("cuda-graphs", ("--cuda-graphs", "sometimes"), "--cuda-graphs"),
    Case("cuda-graphs-case", ("--cuda-graphs", "ON"), "--cuda-graphs"),
    Case("device-meta", ("--device", "meta"), "--device"),
    Case("device-junk", ("--device", "gpu0"), "--device"),
    Case("study-name-traversal", ("--study-name", "../../escape"), "--study-name"),
    Case("study-name-newline", ("--study-name", "a\nb"), "--study-name"),
    Case("val-size-over-the-training-set", ("--val-size", "2147483647"), "--val-size 2147483647 does not fit"),
    Case("study-name-too-many-bytes", ("--study-name", "\u00e9" * 150), "over 200 bytes"),  # 150 chars, 300 bytes
    Case("address", ("--address", "not an address"), "--address"),
    Case("space-empty", ("--space", ""), "--space"),
    Case("data-dir-empty", ("--data-dir", ""), "data-dir"),
    Case("ray-storage-empty", ("--ray-storage", ""), "--ray-storage"),
    Case(
        "results-dir-is-a-file",
        ("--results-dir", "{dir}/afile", "--storage", "sqlite:///{dir}/other.db"),
        "afile",
        files={"afile": "x"},
    ),
    Case("results-dir-under-a-file", ("--results-dir", "{dir}/afile/sub"), "cannot be created", files={"afile": "x"}),
    # -- hostile and careless space files
    Case(
        "space-not-utf8",
        ("--space", "{dir}/latin.yaml"),
        "UTF-8",
        files={"latin.yaml": SPACE.encode() + b"description: \xff\xfe\n"},
    ),
    Case(
        "space-mixed-unknown-keys",
        ("--space", "{dir}/keys.yaml"),
        "1, foo",
        files={"keys.yaml": SPACE + "1: 2\nfoo: bar\n"},
    ),
    Case("space-alias-bomb", ("--space", "{dir}/bomb.yaml"), "aliases", files={"bomb.yaml": _bomb()}),
    Case(
        "space-too-big", ("--space", "{dir}/big.yaml"), "MiB", files={"big.yaml": SPACE + "#" + "x" * (2 << 20) + "\n"}
    ),
    Case("space-width-nan", ("--space", "{dir}/w.yaml"), "width", files={"w.yaml": SPACE + "width: .nan\n"}),
    Case(
        "space-width-huge",
        ("--space", "{dir}/w.yaml"),
        "width",
        files={"w.yaml": SPACE + "width: 1" + "0" * 400 + "\n"},
    ),
    Case("space-width-text", ("--space", "{dir}/w.yaml"), "width", files={"w.yaml": SPACE + "width: wide\n"}),
    Case(
        "space-description-list",
        ("--space", "{dir}/d.yaml"),
        "description",
        files={"d.yaml": SPACE + "description: [a, b]\n"},
    ),
    Case(
        "space-layer-number-keys",
        ("--space", "{dir}/l.yaml"),
        "unknown layer",
        files={"l.yaml": SPACE + "layers:\n  1: [dense]\n  conv99: [dense]\n"},
    ),
    Case(
        "space-spec-mixed-keys",
        ("--space", "{dir}/s.yaml"),
        "choices",
        files={"s.yaml": "model: vgg16\nchoices: [{type: dense, 1: 2, x: 3}]\n"},
    ),
    Case("space-a-folder", ("--space", "{dir}/folder.yaml"), "not a file", files={"folder.yaml/x": "x"}),
    Case("space-missing", ("--space", "{dir}/absent.yaml"), "does not exist"),
    Case("space-a-list", ("--space", "{dir}/list.json"), "mapping", files={"list.json": "[1, 2]"}),
    # -- storage
    Case("storage-sqlite-missing-folder", ("--storage", "sqlite:///{dir}/typo/studies.db"), "mkdir -p"),
    Case("storage-password-unreachable", ("--storage", PG), "cannot open storage"),
    # -- the read-only commands: say what is missing, create nothing
    Case(
        "report-mistyped-results-dir", ("--study", STUDY, "--results-dir", "{dir}/typo"), "no storage", command="report"
    ),
    Case(
        "export-mistyped-results-dir", ("--study", STUDY, "--results-dir", "{dir}/typo"), "no storage", command="export"
    ),
    Case(
        "report-storage-missing",
        ("--study", STUDY, "--storage", "sqlite:///{dir}/typo/s.db"),
        "no storage",
        command="report",
    ),
    Case(
        "export-study-traversal", ("--study", "../x", "--results-dir", "{dir}/results"), "plain name", command="export"
    ),
    Case("report-password", ("--study", STUDY, "--storage", PG), "cannot open storage", command="report"),
    Case(
        "export-storage-not-a-url",
        ("--study", STUDY, "--storage", "{dir}/results/studies.db"),
        "not a URL",
        command="export",
    ),
    Case(
        "spaces-bad-file",
        ("{dir}/keys.yaml",),
        "unknown key",
        command="spaces",
        files={"keys.yaml": SPACE + "foo: 1\n"},
    ),
    Case("flops-bad-uniform", ("--space", "vgg_hetconv", "--uniform", "sideways"), "sideways", command="flops"),
    Case("flops-missing-file", ("--space", "{dir}/absent.yaml"), "does not exist", command="flops"),
    # -- retrain: the config is checked whole, with the command line's rules
    Case(
        "retrain-training-epochs-0",
        ("{dir}/c.json",),
        "training.epochs",
        command="retrain",
        files={"c.json": _config([HET2] * 12, {"dataset": "digits", "epochs": 0})},
    ),
    Case(
        "retrain-training-lr-nan",
        ("{dir}/c.json",),
        "training.lr",
        command="retrain",
        files={"c.json": _config([HET2] * 12, {"dataset": "digits", "lr": "NaN"}).replace('"NaN"', "NaN")},
    ),
    Case(
        "retrain-training-a-list",
        ("{dir}/c.json",),
        "'training' must be a mapping",
        command="retrain",
        files={"c.json": _config([HET2] * 12, [])},
    ),
    Case(
        "retrain-training-dataset",
        ("{dir}/c.json",),
        "imagenet",
        command="retrain",
        files={"c.json": _config([HET2] * 12, {"dataset": "imagenet"})},
    ),
    Case(
        "retrain-training-cuda-graphs",
        ("{dir}/c.json",),
        "training.cuda_graphs",
        command="retrain",
        files={"c.json": _config([HET2] * 12, {"dataset": "digits", "cuda_graphs": True})},
    ),
    Case(
        "retrain-classes-mismatch",
        ("{dir}/c.json",),
        "classes",
        command="retrain",
        files={"c.json": _config([HET2] * 12, num_classes=100)},
    ),
    Case(
        "retrain-seed-negative",
        ("{dir}/c.json",),
        "seed",
        command="retrain",
        files={"c.json": _config([HET2] * 12, seed=-5)},
    ),
    Case("retrain-not-utf8", ("{dir}/c.json",), "UTF-8", command="retrain", files={"c.json": b'{"a": "\xff"}'}),
    Case("retrain-data-dir-empty", ("{dir}/ok.json", "--data-dir", ""), "data_dir", command="retrain"),
    Case("retrain-device", ("{dir}/ok.json", "--device", "tpu"), "device", command="retrain"),
    Case("retrain-device-absent", ("{dir}/ok.json", "--device", "cuda:7"), "cuda:7", command="retrain"),
    Case("device-index-absent", ("--device", "cuda:7"), "cuda:7"),
    # -- deploy: weights and the optional ONNX extra
    Case(
        "deploy-weights-not-torch",
        ("{dir}/ok.json", "--weights", "{dir}/w.pt"),
        "not a torch state dict",
        command="deploy",
        files={"w.pt": "these are not weights"},
    ),
    Case("deploy-weights-missing", ("{dir}/ok.json", "--weights", "{dir}/absent.pt"), "absent.pt", command="deploy"),
    Case("deploy-hetconv-form", ("{dir}/ok.json", "--hetconv-form", "sparse"), "--hetconv-form", command="deploy"),
    Case("deploy-flgc-form", ("{dir}/ok.json", "--flgc-form", "sparse"), "--flgc-form", command="deploy"),
    Case("deploy-missing-config", ("{dir}/absent.json",), "absent.json", command="deploy"),
    # Names too long for the file system (the OS refuses them when asked whether they exist).
    Case("results-dir-name-too-long", ("--results-dir", "{dir}/" + "x" * 300), "--results-dir"),
    Case("storage-name-too-long", ("--storage", "sqlite:///{dir}/" + "x" * 300 + "/s.db"), "storage"),
    Case("weights-name-too-long", ("{dir}/ok.json", "--weights", "x" * 300), "--weights", command="deploy"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_named_bad_input_is_refused_before_anything_is_written(case: Case, workdir: Path):
    for name, content in case.files.items():
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    prefix = list(TINY) + ["--results-dir", str(workdir / "results")] if case.command == "search" else []
    line = check_refused([case.command, *prefix, *_fill(case.args, workdir)], workdir, case.hint)
    assert PASSWORD not in line


FLAGS = {
    "-h",
    "--help",
    "--no-amp",
    "--baselines",
    "--no-baselines",
    "--no-report",
    "--quiet",
    "--json",
    "--onnx",
}  # nothing to get wrong


def test_the_tables_cover_every_option_of_every_command():
    covered = {(c, o) for c, o, _ in NUMERIC}
    for case in CASES:
        covered |= {(case.command, a) for a in case.args if a.startswith("--")}
        if any(not a.startswith("-") for a in case.args[:1]):
            covered.add((case.command, "(positional)"))
    missing = []
    for command, parser in _subparsers().items():
        for action in parser._actions:
            names = action.option_strings or ["(positional)"]
            if set(names) & FLAGS:
                continue
            if (command, names[0]) not in covered:
                missing.append(f"{command} {names[0]}")
    assert not missing, f"options without a bad-input case: {missing}"


def test_deploy_onnx_without_the_extra_is_an_error_naming_it(workdir: Path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("onnx", "onnxscript") else real(name, *a)
    )
    line = check_refused(["deploy", str(workdir / "ok.json"), "--onnx"], workdir, 'pip install -e ".[onnx]"')
    assert "onnx" in line


def test_deploy_weights_of_another_model_name_the_difference(workdir: Path):
    from models import Architecture, build_model

    other = Architecture.from_json(json.loads(_config([HET2] * 12))["architecture"])
    other = Architecture(other.model, 0.5, other.num_classes, other.layers)  # twice the channels
    torch.save(build_model(other).state_dict(), workdir / "other.pt")
    line = check_refused(
        ["deploy", str(workdir / "ok.json"), "--weights", str(workdir / "other.pt")], workdir, "another shape"
    )
    assert "(e.g. " in line and " vs " in line  # the first differing tensor, with both shapes


def test_a_refused_run_leaves_the_study_usable(workdir: Path):
    """The issue's bricked study: a bad run first, then the good command continues the study."""
    results = str(workdir / "results")
    for bad in (["--lr", "nan"], ["--seed", "-1"], ["--max-mflops", "nan"], ["--threads", "-1"]):
        check_refused(["search", *TINY, "--results-dir", results, *bad], workdir, bad[0])
    good = cli(["search", *TINY[:-4], "--budget", "2", "--no-report", "--quiet", "--results-dir", results], workdir)
    assert good.code == 0, good.err
    assert study_snapshot(workdir / "results" / "studies.db")["trials"] == {STUDY: 2}


def test_top_level_help_points_to_the_search_options(tmp_path: Path):
    result = cli(["--help"], tmp_path)
    assert result.code == 0 and "run_search.py search --help" in result.out


# ---------------------------------------------------------------------------- secrets


def test_mask_url_hides_only_the_password():
    assert mask_url("postgresql://u:p@ss@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_url("postgresql+psycopg2://u:pw@h/db?x=1") == "postgresql+psycopg2://u:***@h/db?x=1"
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert mask_url("sqlite:////tmp/a@b/studies.db") == "sqlite:////tmp/a@b/studies.db"
    assert mask_url("postgresql://u:pa/ss@h/db") == "postgresql://u:***@h/db"  # a '/' in the password
    assert set(url_secrets("postgresql://u:p%40ss@h/db")) == {"p%40ss", "p@ss"}


@pytest.mark.slow
def test_password_never_appears_in_any_output_of_a_run(tmp_path: Path, postgres_url: str, monkeypatch):
    """A real search on PostgreSQL with a password in the URL (the test server trusts any
    password), then report and export: stdout, stderr and every file written are grepped."""
    from pg_server import create_database
    from sqlalchemy.engine import make_url

    url = (
        make_url(create_database(postgres_url, "hostile_secrets"))
        .set(password=PASSWORD)
        .render_as_string(hide_password=False)
    )
    assert PASSWORD in url
    results = str(tmp_path / "results")
    monkeypatch.setattr(sys, "argv", ["run_search.py", "--storage", url])  # run.json records the command
    outputs = [cli(["search", *TINY[:-1], "--results-dir", results, "--storage", url], tmp_path)]
    assert outputs[0].code == 0, outputs[0].err
    outputs += [
        cli([c, "--study", STUDY, "--results-dir", results, "--storage", url], tmp_path) for c in ("report", "export")
    ]
    outputs.append(cli(["report", "--study", "nope", "--storage", url], tmp_path))  # an error line names the storage
    assert [o.code for o in outputs] == [0, 0, 0, 2]
    assert "***" in outputs[-1].err and "***" in outputs[0].err  # the URL was shown, masked
    for result in outputs:
        assert PASSWORD not in result.out + result.err
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "run.json" for p in written) and any(p.suffix == ".html" for p in written)
    for path in written:
        assert PASSWORD.encode() not in path.read_bytes(), f"password in {path}"


# ---------------------------------------------------------------------------- hypothesis


class Launched(Exception):
    """The search passed every check and would start now."""


def _no_search(monkeypatch) -> None:
    def refuse(*_a, **_k):
        raise Launched

    monkeypatch.setattr(commands, "run_search", refuse)


def _expect_clean(argv: list[str], folder: Path) -> None:
    """Exit 0 (or a search that would start now) or one error line with exit 2; and nothing
    created before that point either way."""
    before = tree(folder)
    try:
        result: Result | None = cli(argv, folder)
    except Launched:
        result = None
    assert not tree(folder) - before, f"{argv} created {tree(folder) - before}"
    if result is not None and result.code != 0:
        result.one_error_line()


numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0", "1", "2", "-1", "1e999", "nan", "0x10", "", " 3 ", "1_000"]),
)
words = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
) | st.integers(250, 300).map(lambda n: "x" * n)  # names too long for the file system
values = st.one_of(numbers, words)


@st.composite
def search_argv(draw) -> list[str]:
    parser = _subparsers()["search"]
    options = [a for a in parser._actions if a.option_strings and not set(a.option_strings) & FLAGS]
    chosen = draw(st.lists(st.sampled_from(options), max_size=4, unique_by=lambda a: a.dest))
    argv = ["search", "--preset", "quick", "--threads", "1"]
    for action in chosen:
        argv += [action.option_strings[0], draw(values)]
    return argv


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(argv=search_argv())
def test_random_search_arguments_are_accepted_or_one_error_line(argv, tmp_path_factory, monkeypatch):
    _no_search(monkeypatch)
    _expect_clean(argv, tmp_path_factory.mktemp("fuzz_argv"))


@st.composite
def read_only_argv(draw) -> list[str]:
    command = draw(st.sampled_from(["report", "export", "flops", "spaces"]))
    if command in ("report", "export"):
        argv = [command, "--study", draw(words)]
        if draw(st.booleans()):
            argv += ["--results-dir", draw(words)]
        if draw(st.booleans()):
            argv += ["--storage", "sqlite:///" + draw(words)]
        return argv
    if command == "flops":  # one uniform value: an accepted one costs one model, not a whole space
        return [
            "flops",
            "--space",
            draw(st.sampled_from(["vgg_flgc", "x.yaml", ""])),
            "--uniform",
            draw(values),
            "--width",
            draw(st.sampled_from(["0.125", "0.25"]) | numbers),
            "--classes",
            draw(numbers),
        ]
    return ["spaces", draw(words) + ".yaml", "--width", draw(numbers)]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(argv=read_only_argv())
def test_read_only_commands_never_create_anything(argv, tmp_path_factory):
    _expect_clean(argv, tmp_path_factory.mktemp("fuzz_read_only"))


yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**66), max_value=2**66),
    st.floats(),
    words,
    st.sampled_from(["vgg16", "mobilenetv2", "dense", "hetconv:2", "flgc:4", "flgc:4:free", "conv02", "b00_project"]),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.one_of(words, yaml_scalars), inner, max_size=4),
    max_leaves=12,
)
space_keys = st.sampled_from(["name", "description", "model", "width", "choices", "layers", "default_type"]) | words


@st.composite
def space_files(draw) -> tuple[str, bytes]:
    import yaml

    kind = draw(st.sampled_from(["mapping", "mapping", "mapping", "text", "bytes"]))
    suffix = draw(st.sampled_from([".yaml", ".yml", ".json"]))
    if kind == "bytes":
        return suffix, draw(st.binary(max_size=200))
    if kind == "text":
        return suffix, draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    data = draw(st.dictionaries(space_keys, yaml_values, max_size=6))
    if draw(st.booleans()):
        data["model"] = draw(st.sampled_from(["vgg16", "mobilenetv2"]))
        data["choices"] = draw(
            st.lists(st.sampled_from(["dense", "hetconv:2", "flgc:2", "flgc:8:free", "hetconv:3"]), max_size=3)
        )
    try:
        text = json.dumps(data) if suffix == ".json" else yaml.safe_dump(data, allow_unicode=True)
    except Exception:  # noqa: BLE001  (keys or characters a writer refuses: any text will do)
        text = repr(data)
    return suffix, text.encode("utf-8", "surrogatepass")


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(space=space_files())
def test_random_space_files_are_loaded_or_one_error_line(space, tmp_path_factory, monkeypatch):
    _no_search(monkeypatch)
    folder = tmp_path_factory.mktemp("fuzz_space")
    suffix, content = space
    (folder / f"space{suffix}").write_bytes(content)
    _expect_clean(["search", "--preset", "quick", "--space", str(folder / f"space{suffix}")], folder)


@settings(max_examples=60, deadline=None)
@given(
    training=st.dictionaries(
        st.sampled_from(list(NUMBERS) + ["dataset", "device", "data_dir", "amp", "cuda_graphs"]),
        yaml_values,
        max_size=4,
    ),
    seed=yaml_values,
)
def test_random_config_recipes_are_accepted_or_one_line_errors(training, seed, tmp_path_factory):
    """An exported config's training recipe and seed: valid, or one line naming the field.
    (Through load_config, the check ``retrain`` and ``deploy`` run before any work.)"""
    from models import ArchitectureError
    from search.artifacts.retrain import load_config
    from search.errors import UserError

    path = tmp_path_factory.mktemp("fuzz_config") / "c.json"
    try:
        path.write_text(_config([HET2] * 12, {"dataset": "digits", **training}, seed=seed))
    except (TypeError, ValueError):  # not JSON-representable: nothing to test
        return
    try:
        config = load_config(path)
    except (UserError, ArchitectureError) as err:
        assert "\n" not in str(err) and str(err)
        return
    from search.settings import TrainingSettings

    used = dataclasses.asdict(TrainingSettings.from_json(config["training"]))
    for name, value in used.items():  # accepted: every number it will use is finite and in range
        if name in NUMBERS and value is not None:
            assert NUMBERS[name].accepts(value) and math.isfinite(value), (name, value)
