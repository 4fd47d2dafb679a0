"""The ``flops`` and ``spaces`` commands through the real CLI (``python run_search.py ...``).

The subprocesses are started together once per module (each takes ~3 s) and their results
shared by the tests. Expected MFLOPs are computed from the layer shapes in docs/models.md.
"""

from __future__ import annotations

import json
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest
from cli_process import HANG_SECONDS, start_cli

ROOT = Path(__file__).resolve().parent.parent

VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
MBV2_SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]

COMMANDS = {
    "vgg_all": ["flops", "--space", "vgg_hetconv", "--uniform", "all", "--json"],
    "mbv2_all": ["flops", "--space", "mbv2_flgc", "--uniform", "all", "--json"],
    "vgg_dense_table": ["flops", "--space", "vgg_hetconv", "--uniform", "dense"],
    "unknown_space": ["flops", "--space", "no_such_space", "--uniform", "all"],
    "illegal_uniform": ["flops", "--space", "vgg_hetconv", "--uniform", "3", "--json"],
    "spaces": ["spaces", "--json"],
    "spaces_file": ["spaces", "{file}", "--width", "0.25"],
    "spaces_file_json": ["spaces", "{file}", "--width", "0.25", "--json"],
}
# At width 0.25 the VGG-16 convs have 16 to 128 channels: P = 64 fits only those with 64 or
# more in and out (conv06 onwards), G = 32 those with 32 or more (conv04 onwards).
PARTIAL_SPACE = "model: vgg16\nchoices: [dense, 'hetconv:2', 'hetconv:64', 'flgc:32']\n"


@pytest.fixture(scope="module")
def cli(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    space_file = tmp_path_factory.mktemp("spaces") / "partial.yaml"
    space_file.write_text(PARTIAL_SPACE)
    procs = {
        key: start_cli(
            [str(space_file) if a == "{file}" else a for a in args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for key, args in COMMANDS.items()
    }
    results = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=HANG_SECONDS)
        results[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


# ----------------------------------------------------------------------------- expected counts


def vgg_shapes():
    """(D, C_out, C_in) of the 13 convs, then total MACs of the fixed part."""
    convs, cin, d = [], 3, 32
    for item in VGG_CFG:
        if item == "M":
            d //= 2
        else:
            convs.append((d, item, cin))
            cin = item
    return convs


def vgg_expected_macs(part: int | None) -> Fraction:
    """Paper-convention MACs of VGG-16 (10 classes) with every searchable conv HetConv(P)."""
    convs = vgg_shapes()
    total = Fraction(convs[0][0] ** 2 * convs[0][1] * convs[0][2] * 9)
    ratio = 1 if part is None else Fraction(1, part) + (1 - Fraction(1, part)) / 9
    total += sum(d * d * cout * cin * 9 * ratio for d, cout, cin in convs[1:])
    return total + 512 * 512 + 512 + 512 * 10 + 10


def mbv2_expected_macs(groups: int | None) -> Fraction:
    g = 1 if groups is None else groups
    total = Fraction(32 * 32 * 32 * 3 * 9)
    cin, d = 32, 32
    for t, c, n, s in MBV2_SETTINGS:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden, dout = cin * t, d // stride
            if t != 1:
                total += Fraction(d * d * hidden * cin, g)
            total += dout * dout * hidden * 9
            total += Fraction(dout * dout * c * hidden, g)
            if stride == 1 and cin != c:
                total += d * d * c * cin
            cin, d = c, dout
    return total + d * d * 1280 * 320 + 1280 * 10 + 10


# ----------------------------------------------------------------------------- flops


def _rows(result) -> list[dict]:
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert isinstance(rows, list) and rows
    for row in rows:
        assert set(row) == {"space", "uniform", "mflops", "mflops_all_ops", "params"}
    return rows


def test_flops_vgg_hetconv_all(cli):
    rows = _rows(cli["vgg_all"])
    assert [r["uniform"] for r in rows] == ["dense", "1", "2", "4", "8", "16", "32", "64"]
    assert all(r["space"] == "vgg_hetconv" for r in rows)
    for row in rows:
        part = None if row["uniform"] == "dense" else int(row["uniform"])
        assert row["mflops"] == pytest.approx(float(vgg_expected_macs(part)) / 1e6, abs=1e-3), row
        assert row["mflops_all_ops"] >= row["mflops"]
    by = {r["uniform"]: r for r in rows}
    assert by["dense"]["params"] == 14_987_722
    assert by["1"]["mflops"] == by["dense"]["mflops"] and by["1"]["params"] == by["dense"]["params"]
    mflops = [r["mflops"] for r in rows[1:]]
    assert mflops == sorted(mflops, reverse=True)
    params = [r["params"] for r in rows[1:]]
    assert params == sorted(params, reverse=True)


def test_flops_mbv2_flgc_all(cli):
    rows = _rows(cli["mbv2_all"])
    assert [r["uniform"] for r in rows] == ["dense", "1", "2", "4", "8"]
    for row in rows:
        groups = None if row["uniform"] == "dense" else int(row["uniform"])
        assert row["mflops"] == pytest.approx(float(mbv2_expected_macs(groups)) / 1e6, abs=1e-3), row
        assert row["mflops_all_ops"] >= row["mflops"]
    assert rows[0]["params"] == 2_295_834


def test_flops_dense_table(cli):
    result = cli["vgg_dense_table"]
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].split() == ["space", "uniform", "mflops", "mflops_all_ops", "params"]
    cells = lines[1].split()
    assert cells[:2] == ["vgg_hetconv", "dense"]
    assert float(cells[2]) == pytest.approx(float(vgg_expected_macs(None)) / 1e6, abs=1e-3)
    assert int(cells[4]) == 14_987_722


@pytest.mark.parametrize("key,needle", [("unknown_space", "no_such_space"), ("illegal_uniform", "3")])
def test_flops_errors(cli, key, needle):
    result = cli[key]
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_illegal_uniform_lists_legal_values(cli):
    line = cli["illegal_uniform"].stderr.strip()
    for value in ("dense", "1", "2", "64"):
        assert value in line


# ----------------------------------------------------------------------------- spaces


def test_spaces_json(cli):
    result = cli["spaces"]
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    by = {r["space"]: r for r in rows}
    expected_layers = {"vgg_hetconv": 12, "vgg_flgc": 12, "mbv2_flgc": 33, "vgg_mixed": 12}
    assert set(expected_layers) <= set(by)
    for name, layers in expected_layers.items():
        row = by[name]
        assert row["layers"] == layers
        assert float(row["size"]) > 1
        assert row["mflops_min"] < row["mflops_max"]
    # the most expensive candidate of the VGG spaces is the dense model
    for name in ("vgg_hetconv", "vgg_flgc", "vgg_mixed"):
        assert by[name]["mflops_max"] == pytest.approx(float(vgg_expected_macs(None)) / 1e6, abs=0.01)
    assert by["vgg_hetconv"]["mflops_min"] == pytest.approx(float(vgg_expected_macs(64)) / 1e6, abs=0.01)
    assert by["vgg_hetconv"]["size"] == f"{7**12:.3g}"


def test_spaces_says_where_a_choice_of_a_file_does_not_fit(cli):
    result = cli["spaces_file"]
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    assert lines[-2:] == [
        "partial: hetconv:64 does not fit conv02, conv03, conv04, conv05 (not a choice there)",
        "partial: flgc:32 does not fit conv02, conv03 (not a choice there)",
    ], result.stdout
    rows = {r["space"]: r for r in json.loads(cli["spaces_file_json"].stdout)}
    assert rows["partial"]["unfit"] == {
        "hetconv:64": ["conv02", "conv03", "conv04", "conv05"],
        "flgc:32": ["conv02", "conv03"],
    }
    assert rows["vgg_hetconv"]["unfit"] == {}  # a built-in space lists what fits each layer


# ----------------------------------------------------------------------------- in-process


def test_flops_rows_all_has_one_row_per_distinct_model():
    """``--uniform all`` in a space whose choices include ``dense`` (vgg_mixed)."""

    from search.commands import flops_rows

    rows = flops_rows("vgg_mixed", "all", 0.25)
    names = [r["uniform"] for r in rows]
    assert names[0] == "dense"
    assert len(names) == len(set(names)), names
