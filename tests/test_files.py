"""search/files.py: a file is replaced whole or not at all, and no temporary file is left."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from search.files import atomic_torch_save, atomic_write, atomic_write_text


def test_text_and_torch_files_are_written_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    saved = tmp_path / "state.pt"
    atomic_torch_save({"w": torch.arange(3)}, saved)
    assert torch.equal(torch.load(saved, weights_only=True)["w"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "state.pt"]


def test_files_get_the_mode_of_any_new_file(tmp_path: Path) -> None:
    """Not mkstemp's private 0600: others sharing a results folder must read exports."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "atomic.txt", "x")
    atomic_torch_save({}, tmp_path / "atomic.pt")
    mode = plain.stat().st_mode & 0o777
    assert (tmp_path / "atomic.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "atomic.pt").stat().st_mode & 0o777 == mode


def test_a_failing_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "table.json"
    path.write_text("old")

    def half_written(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_written)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.json"]
