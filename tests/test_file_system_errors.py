"""The file system, not the input, goes wrong: a symbolic-link loop as the results folder, a
budget lock that cannot be opened, a disk that fills while the report is written. Each ends
with one ``error:`` line and no traceback, and a report that was good stays good (the report's
files are written atomically). In-process (``run_search.main``), nothing trains."""

from __future__ import annotations

import errno
import random
from pathlib import Path

from optuna.trial import TrialState
from test_bad_input_cli import run_in_process
from test_report import add, attrs, new_study, random_arch

from spaces import get_space

TINY = [
    "--dataset",
    "digits",
    "--preset",
    "quick",
    "--epochs",
    "1",
    "--threads",
    "1",
    "--budget",
    "1",
    "--confirm",
    "0",
    "--quiet",
]


def one_error_line(proc, code: int) -> str:
    shown = f"exit {proc.returncode}\n--- stderr ---\n{proc.stderr}"
    assert proc.returncode == code, shown
    assert "Traceback" not in proc.stderr, shown
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    return lines[0]


def test_a_symbolic_link_loop_as_results_dir(tmp_path):
    (tmp_path / "loop").symlink_to("loop")
    line = one_error_line(run_in_process([*TINY, "--results-dir", "loop"], tmp_path), 2)
    assert "--results-dir loop cannot be used" in line and "loop" in line.lower()


def test_a_budget_lock_that_cannot_be_opened(tmp_path):
    results = tmp_path / "results"
    (results / "studies.vgg_hetconv-digits.lock").mkdir(parents=True)  # a folder where the lock file goes
    line = one_error_line(run_in_process([*TINY, "--results-dir", "results"], tmp_path), 2)
    assert "budget lock" in line and "studies.vgg_hetconv-digits.lock" in line and "writable" in line


def _study_with_trials(tmp_path: Path) -> list[str]:
    """A study of three trials; the arguments of ``report`` on it."""
    study = new_study(tmp_path)
    rng = random.Random(0)
    space = get_space("vgg_hetconv", width=0.25)
    for minute in range(3):
        arch = random_arch(space, rng)
        add(study, TrialState.COMPLETE, [0.5 + 0.1 * minute, 10.0 - minute], attrs(arch, 0.5), minute=minute)
    return ["report", "--results-dir", str(tmp_path), "--study", "unit"]


def test_a_folder_where_the_report_goes_is_named(tmp_path):
    args = _study_with_trials(tmp_path)
    (tmp_path / "unit" / "report.html").mkdir(parents=True)
    line = one_error_line(run_in_process(args, tmp_path), 1)
    # the target, not the temporary file the report was written to first
    assert line.startswith("error: Is a directory (") and line.split("(")[1].startswith(f"{tmp_path}/unit/report.html)")


def test_a_full_disk_while_the_report_is_written_keeps_the_last_report(tmp_path, monkeypatch):
    args = _study_with_trials(tmp_path)
    first = run_in_process(args, tmp_path)
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "unit"
    before = {name: (folder / name).read_bytes() for name in ("report.html", "trials.csv", "pareto.csv")}

    def disk_full_halfway(self: Path, data: str, *args, **kwargs) -> int:
        with open(self, "w") as handle:  # truncates, writes half, then the disk is full
            handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", disk_full_halfway)
    line = one_error_line(run_in_process(args, tmp_path), 1)
    assert line.startswith("error: No space left on device") and "report.html" in line, line
    assert "the study is kept" in line
    after = {name: (folder / name).read_bytes() for name in before}
    assert after == before, "the last good report was overwritten by a half-written one"
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")], "temporary files left behind"
