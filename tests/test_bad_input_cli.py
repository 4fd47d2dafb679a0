"""Bad input through the real command line (subprocesses; the much larger table, every option
of every command, runs in-process in tests/test_hostile_input.py): every case must end with exit code 2, ONE
``error: ...`` line on stderr (no traceback) that names what is wrong, and leave the existing
study untouched.

One table (``CASES``) drives everything. A real tiny search (``--preset quick --epochs 1
--budget 1``) prepares a study once per module in a template results folder; every case gets
its own tmp folder (the working directory of its process) with a copy of that results folder,
runs ``python run_search.py ...`` there, and is compared before/after by the *content* of the
SQLite storage (study list, trial count and states, study user attributes, and a hash of a
sorted dump of every table; the file's bytes may change harmlessly).

Search cases get ``--preset quick --epochs 1 --threads 1 --budget 1 --no-report`` first (the
case's own options come after and win), so a case the tool wrongly accepts finishes at once
(the template study already has its one trial) instead of training.

``flops``, ``spaces``, ``retrain`` and ``deploy`` take no results folder and open no study: for them the
check is that no results folder (nor any output file) appears.

Time: a process costs ~3-5 CPU seconds, nearly all of it importing torch, torchvision and
optuna, so the cases run in this process (``run_search.main``, stdout and stderr captured, in
the case folder); the few in ``SUBPROCESS`` also run as real processes, which proves the path
from the command line (exit code, stderr) the in-process runs skip.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_process import HANG_SECONDS, cli_command, cli_env, run_cli

ROOT = Path(__file__).resolve().parent.parent
STUDY = "vgg_hetconv-digits"  # the template study (default name: <space>-<dataset>)
TEMPLATE_ARGS = [
    "--preset",
    "quick",
    "--epochs",
    "1",
    "--budget",
    "1",
    "--threads",
    "1",
    "--no-report",
    "--confirm",
    "0",
]
SEARCH_PREFIX = ["--preset", "quick", "--epochs", "1", "--threads", "1", "--budget", "1", "--no-report"]
CASE_TIMEOUT = HANG_SECONDS  # per process: a case that takes this long hangs
WITH_RESULTS_DIR = ("search", "report", "export")  # commands that take --results-dir


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # after the command; "{dir}" is the case folder, "{empty}" an empty folder in it
    hint: str  # must appear in the error line
    command: str = "search"
    files: dict[str, str] = field(default_factory=dict)  # written into the case folder first
    absent: tuple[str, ...] = ()  # paths (relative to the case folder) that must not exist afterwards


def _arch(layers: list) -> dict:
    return {"model": "vgg16", "width": 0.25, "num_classes": 10, "layers": layers}


def _config(layers: list) -> str:
    return json.dumps(
        {
            "format": "flgc-hetconv-nas/config/v1",
            "architecture": _arch(layers),
            "training": {"dataset": "digits", "epochs": 1},
            "seed": 0,
        }
    )


HET2 = {"type": "hetconv", "part": 2}
HET3 = {"type": "hetconv", "part": 3}  # divides no channel count of VGG-16 at width 0.25

CASES = [
    # -- names and values of search options
    Case("unknown-space", ("--space", "nope"), "nope"),
    Case("unknown-dataset", ("--dataset", "imagenet"), "imagenet"),
    Case("unknown-sampler", ("--sampler", "annealing"), "annealing"),
    Case("unknown-backend", ("--backend", "dask"), "dask"),
    Case("unknown-objective", ("--objectives", "accuracy,speed"), "speed"),
    Case("objectives-without-accuracy", ("--objectives", "mflops,params"), "accuracy"),
    Case("budget-zero", ("--budget", "0"), "--budget"),
    Case("budget-negative", ("--budget", "-3"), "-3"),
    Case("tune-unknown", ("--tune", "nope"), "nope"),
    # A list option names each value once (--tune lr,lr was taken as --tune lr).
    Case("tune-repeated", ("--tune", "lr,lr"), "--tune must name each"),
    Case("objectives-repeated", ("--objectives", "accuracy,params,params"), "once each"),
    Case("objectives-repeated-by-alias", ("--objectives", "accuracy,flops,mflops"), "once each"),
    Case("latency-unknown", ("--latency", "foo"), "--latency"),
    Case("early-stop-unknown", ("--early-stop", "foo"), "foo"),
    Case("cuda-graphs-unknown", ("--cuda-graphs", "maybe"), "--cuda-graphs"),
    Case(
        "early-stop-min-epochs-above-epochs",
        ("--early-stop", "mo-asha", "--min-epochs", "5", "--epochs", "3"),
        "--min-epochs",
    ),
    Case("early-stop-eta-1", ("--early-stop", "mo-asha", "--eta", "1"), "--eta"),
    # --eta alone: only checked together with --early-stop mo-asha (see the report)
    Case("eta-1-without-early-stop", ("--eta", "1"), "--eta"),
    Case("device-cuda-on-cpu", ("--device", "cuda"), "cuda"),
    Case("max-mflops-below-cheapest", ("--max-mflops", "0.01"), "--max-mflops"),
    # -- space files
    Case(
        "space-file-bad-yaml",
        ("--space", "{dir}/bad.yaml"),
        "not valid YAML",
        files={"bad.yaml": "model: [vgg16\nchoices: [dense\n"},
    ),
    Case(
        "space-file-bad-json",
        ("--space", "{dir}/bad.json"),
        "not valid JSON",
        files={"bad.json": '{"model": "vgg16", "choices": ['},
    ),
    Case(
        "space-file-override-not-dividing",
        ("--space", "{dir}/override.yaml"),
        "conv02",
        files={"override.yaml": 'model: vgg16\nchoices: [dense, "hetconv:2"]\nlayers:\n  conv02: ["hetconv:3"]\n'},
    ),
    # A choice no layer can take was dropped without a word (a one-candidate space, or none).
    Case(
        "space-file-choice-no-part",
        ("--space", "{dir}/zero.yaml"),
        "choice hetconv:0 fits no layer",
        files={"zero.yaml": "model: vgg16\nchoices: [dense, 'hetconv:0', 'hetconv:3']\n"},
    ),
    Case(
        "space-file-part-divides-no-layer",
        ("--space", "{dir}/three.yaml"),
        "choice hetconv:3 fits no layer at width 0.25",
        files={"three.yaml": "model: vgg16\nchoices: [dense, 'hetconv:2', 'hetconv:3']\n"},
    ),
    Case(
        "space-file-unknown-model",
        ("--space", "{dir}/model.yaml"),
        "resnet50",
        files={"model.yaml": 'model: resnet50\nchoices: [dense, "hetconv:2"]\n'},
    ),
    Case(
        "space-file-unknown-layer",
        ("--space", "{dir}/layer.yaml"),
        "conv99",
        files={"layer.yaml": 'model: vgg16\nchoices: [dense, "hetconv:2"]\nlayers:\n  conv99: [dense]\n'},
    ),
    # -- storage
    Case("storage-not-a-url", ("--storage", "notaurl"), "notaurl", absent=("notaurl",)),
    # Nothing listens on port 1: the line must say the storage cannot be opened (not blame a driver).
    Case("storage-unreachable", ("--storage", "postgresql://u@127.0.0.1:1/db"), "cannot open storage"),
    Case(
        "storage-unreachable-psycopg2", ("--storage", "postgresql+psycopg2://u@127.0.0.1:1/db"), "cannot open storage"
    ),
    # An explicit storage's folder must exist: a typo never starts a new study elsewhere.
    Case(
        "storage-folder-under-a-file",
        ("--storage", "sqlite:///{dir}/afile/sub/studies.db"),
        "does not exist",
        files={"afile": "a regular file\n"},
        absent=("afile/sub",),
    ),
    # The password is masked in the error line (the line must show the URL as u:***@).
    Case("storage-password-masked", ("--storage", "postgresql://u:hunter2pw@127.0.0.1:1/db"), "u:***@127.0.0.1"),
    # Nothing listens on port 1: one line before anything is created (Ray's own connect retried for minutes).
    Case(
        "ray-address-unreachable",
        ("--backend", "ray", "--address", "127.0.0.1:1", "--results-dir", "{dir}/fresh"),
        "127.0.0.1:1: nothing listens there",
        absent=("fresh",),
    ),
    # NaN passed validation once, failed every trial and bricked the study (its protocol had NaN).
    Case("lr-nan", ("--lr", "nan"), "--lr"),
    # -- the existing study: options that would change what it searches
    # The line must name what differs (the width), not only the per-layer choices it implies.
    Case("study-other-width", ("--width", "0.5"), "width"),
    Case("study-other-objectives", ("--objectives", "accuracy,params"), "objectives"),
    Case("study-other-epochs", ("--epochs", "2"), "protocol"),
    # The dataset is part of the default study name, so only --study-name can point a CIFAR
    # run at the digits study; the data are loaded (and fail, offline) BEFORE the storage is
    # opened, so the data error comes first, not the study mismatch.
    Case(
        "study-other-dataset",
        ("--study-name", STUDY, "--dataset", "cifar10", "--data-dir", "{empty}"),
        "--dataset digits",
    ),
    # -- data
    Case(
        "cifar-missing-offline",
        ("--dataset", "cifar10", "--data-dir", "{empty}", "--results-dir", "{dir}/fresh"),
        "--dataset digits",
        absent=("fresh/studies.db",),
    ),
    # -- other commands
    Case("report-unknown-study", ("--study", "nope"), "nope", command="report"),
    Case("export-unknown-study", ("--study", "nope"), "nope", command="export"),
    Case("flops-illegal-uniform", ("--space", "vgg_hetconv", "--uniform", "3"), "3 is not", command="flops"),
    Case(
        "spaces-choice-no-part",
        ("{dir}/zero.yaml",),
        "choice hetconv:0 fits no layer",
        command="spaces",
        files={"zero.yaml": "model: vgg16\nchoices: [dense, 'hetconv:0']\n"},
    ),
    Case(
        "retrain-wrong-layer-count",
        ("{dir}/short.json",),
        "11 layer specs",
        command="retrain",
        files={"short.json": _config([HET2] * 11)},
        absent=("short.pt", "short.retrain.json"),
    ),
    Case(
        "deploy-wrong-layer-count",
        ("{dir}/long.json",),
        "13 layer specs",
        command="deploy",
        files={"long.json": _config([HET2] * 13)},
        absent=("long.torchscript.pt",),
    ),
    Case(
        "deploy-batch-zero",
        ("{dir}/ok.json", "--batch", "0"),
        "--batch",
        command="deploy",
        files={"ok.json": _config([HET2] * 12)},
        absent=("ok.torchscript.pt",),
    ),
    Case(
        "deploy-unknown-flgc-form",
        ("{dir}/ok.json", "--flgc-form", "sparse"),
        "--flgc-form",
        command="deploy",
        files={"ok.json": _config([HET2] * 12)},
        absent=("ok.torchscript.pt",),
    ),
    Case(
        "retrain-not-json",
        ("{dir}/bad.json",),
        "not valid JSON",
        command="retrain",
        files={"bad.json": "{architecture: vgg16"},
    ),
    Case(
        "retrain-illegal-part",
        ("{dir}/part3.json",),
        "conv02",
        command="retrain",
        files={"part3.json": _config([HET3] + [HET2] * 11)},
    ),
    Case("retrain-missing-config", ("{dir}/absent.json",), "absent.json", command="retrain", absent=("absent.pt",)),
]

# Also run as real processes: a refused search option, a refused study change, the masked
# password, a read-only command, a repeated list value, a choice no layer takes, a Ray address
# where nothing listens.
SUBPROCESS = (
    "unknown-space",
    "study-other-epochs",
    "storage-password-masked",
    "report-unknown-study",
    "tune-repeated",
    "space-file-choice-no-part",
    "ray-address-unreachable",
)


# ------------------------------------------------------------------------------- helpers


def run_in_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python run_search.py ARGS`` in this process (``run_search.main``) in ``cwd``, with
    stdout and stderr captured."""
    import run_search

    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run_search.main(list(args))
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return run_cli(args, cwd, timeout=CASE_TIMEOUT, env=cli_env(PYTHONWARNINGS=None))
    except subprocess.TimeoutExpired as err:
        return subprocess.CompletedProcess(
            cli_command(args), -1, str(err.stdout or ""), f"TIMEOUT after {CASE_TIMEOUT}s\n{err.stderr or ''}"
        )


def study_snapshot(db: Path) -> dict:
    """What must not change: studies, their trials and user attributes, and every table's rows."""
    assert db.is_file(), f"{db} is missing"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        studies = dict(conn.execute("SELECT study_id, study_name FROM studies").fetchall())
        trials = {studies[sid]: n for sid, n in conn.execute("SELECT study_id, COUNT(*) FROM trials GROUP BY study_id")}
        states = sorted(conn.execute("SELECT study_id, number, state FROM trials").fetchall())
        attrs = {
            (studies[sid], key): value
            for sid, key, value in conn.execute("SELECT study_id, key, value_json FROM study_user_attributes")
        }
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        digest = hashlib.sha256()
        for table in tables:
            rows = sorted(repr(row) for row in conn.execute(f'SELECT * FROM "{table}"'))
            digest.update(f"{table}:{len(rows)}\n".encode())
            for row in rows:
                digest.update(row.encode() + b"\n")
    finally:
        conn.close()
    return {
        "studies": sorted(studies.values()),
        "trials": trials,
        "states": states,
        "user_attrs": attrs,
        "dump_sha256": digest.hexdigest(),
    }


@dataclass
class Outcome:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    before: dict | None  # None: the command takes no results folder (flops, retrain, deploy)
    after: dict | None
    seconds: float
    folder: Path


def _uses_study(case: Case) -> bool:
    return case.command in WITH_RESULTS_DIR


def _prepare(case: Case, folder: Path, template: Path | None) -> list[str]:
    folder.mkdir(parents=True)
    (folder / "empty").mkdir()
    for name, text in case.files.items():
        (folder / name).write_text(text)
    subs = {"{dir}": str(folder), "{empty}": str(folder / "empty")}

    def fill(arg: str) -> str:
        for key, value in subs.items():
            arg = arg.replace(key, value)
        return arg

    args = [case.command]
    if case.command == "search":
        args += SEARCH_PREFIX
    if template is not None:
        shutil.copytree(template, folder / "results")
        args += ["--results-dir", str(folder / "results")]  # a case's own --results-dir comes later and wins
    return args + [fill(a) for a in case.args]


def _run_case(case: Case, folder: Path, template: Path | None, subprocesses: bool) -> Outcome:
    """Run one case; ``template`` (the prepared results folder) for the commands that open a study."""
    args = _prepare(case, folder, template)
    db = folder / "results" / "studies.db"
    before = study_snapshot(db) if template is not None else None
    start = time.monotonic()
    proc = (_run if subprocesses else run_in_process)(args, cwd=folder)
    seconds = time.monotonic() - start
    after = study_snapshot(db) if template is not None and db.is_file() else None
    return Outcome(args, proc.returncode, proc.stdout, proc.stderr, before, after, seconds, folder)


def _make_template(base: Path) -> Path:
    """The shared prepared study: a real tiny search into a template results folder."""
    cwd, template = base / "template_run", base / "template_results"
    cwd.mkdir()
    proc = run_in_process(["search", *TEMPLATE_ARGS, "--results-dir", str(template)], cwd=cwd)
    assert proc.returncode == 0, f"template search failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    snapshot = study_snapshot(template / "studies.db")
    assert snapshot["studies"] == [STUDY] and snapshot["trials"] == {STUDY: 1}, snapshot
    return template


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    """Every case in this process, then the ``SUBPROCESS`` ones again as real processes (two at
    a time), keyed ``<id>`` and ``<id>[process]``."""
    base = tmp_path_factory.mktemp("bad_input")
    template = _make_template(base)
    by_id = {case.id: case for case in CASES}
    results: dict[str, Outcome] = {"(template)": template}  # type: ignore[dict-item]
    with ThreadPoolExecutor(max_workers=2) as pool:
        processes = {
            f"{id}[process]": pool.submit(
                _run_case, by_id[id], base / f"{id}-process", _template_for(by_id[id], template), True
            )
            for id in SUBPROCESS
        }
        for case in CASES:
            results[case.id] = _run_case(case, base / case.id, _template_for(case, template), False)
        results.update({key: future.result() for key, future in processes.items()})
    return results


def _template_for(case: Case, template: Path) -> Path | None:
    return template if _uses_study(case) else None


# ------------------------------------------------------------------------------- the table


def test_template_study_is_prepared(outcomes):
    template = outcomes["(template)"]
    assert study_snapshot(template / "studies.db")["trials"] == {STUDY: 1}


def test_case_ids_are_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)) and set(SUBPROCESS) <= set(ids)


_RUNS = [pytest.param(case, case.id, id=case.id) for case in CASES]
_RUNS += [pytest.param(case, f"{case.id}[process]", id=f"{case.id}-process") for case in CASES if case.id in SUBPROCESS]


@pytest.mark.parametrize("case,key", _RUNS)
def test_bad_input_is_one_line_exit_2_and_leaves_the_study_alone(case: Case, key: str, outcomes: dict[str, Outcome]):
    out: Outcome = outcomes[key]
    shown = (
        f"\n$ (cd {out.folder} && python run_search.py {' '.join(out.argv)})"
        f"\nexit {out.returncode} after {out.seconds:.1f}s\n--- stderr ---\n{out.stderr}--- stdout ---\n{out.stdout}"
    )
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert "Traceback" not in out.stderr, shown
    assert out.returncode == 2, shown
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:{shown}"
    assert lines[0].startswith("error:"), shown
    assert lines[0][len("error:") :].strip(), shown
    assert case.hint in lines[0], f"hint {case.hint!r} not in the error line:{shown}"
    assert "hunter2pw" not in out.stderr + out.stdout, shown
    if out.before is not None:
        assert out.after is not None, f"the study storage disappeared:{shown}"
        assert out.after == out.before, f"the study changed:\nbefore {out.before}\nafter  {out.after}{shown}"
    else:  # flops, spaces, retrain, deploy take no results folder: nothing may appear where one would go
        assert not (out.folder / "results").exists(), f"a results folder was created:{shown}"
    for path in case.absent:
        assert not (out.folder / path).exists(), f"{path} was created:{shown}"
