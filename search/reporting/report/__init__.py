"""The report of a study: one self-contained HTML page, two CSV tables and optional PNGs.

Everything is read back from the study storage through :func:`search.storage.load_records`
(never from the in-memory state of a run), so a report can be rebuilt after a crash, on
another machine, or while a search is still running.

``write_report(study, out_dir)`` writes into ``out_dir``:

- ``report.html``: one file that opens offline (plotly.js is embedded inline, once; no CDN
  link, no external resource). Sections: accuracy vs MFLOPs of every trial with the Pareto
  front, hypervolume over trials and over wall-clock time, per-layer choices of the Pareto
  configurations, their per-epoch validation accuracy, and a table of them.
- ``trials.csv``: one row per trial (:func:`trials_frame`).
- ``pareto.csv``: the Pareto front only, sorted by MFLOPs.
- ``figures/*.png``: the same figures as images, when a Chromium is available for kaleido.

The parts: ``data`` (what is read from the storage), ``records`` (values of a trial, the CSVs),
``style``, ``scatter`` and ``figures`` (the plotly figures), ``tables`` and ``page`` (the HTML),
``images`` (the PNGs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna

from search.files import atomic_write
from search.reporting.report import images
from search.reporting.report.data import read_report_data
from search.reporting.report.figures import report_figures
from search.reporting.report.page import render_page
from search.reporting.report.records import layer_code, layer_value, published_model, trials_frame, write_tables

__all__ = ["ReportFiles", "layer_code", "layer_value", "published_model", "trials_frame", "write_report"]


@dataclass
class ReportFiles:
    """The files :func:`write_report` wrote."""

    html: Path
    trials_csv: Path
    pareto_csv: Path
    pngs: list[Path]  # empty when no Chromium
    png_notice: str | None  # one-line notice when PNGs could not be written


def write_report(study: optuna.Study, out_dir: Path, png: bool | None = None) -> ReportFiles:
    """Write ``report.html``, ``trials.csv``, ``pareto.csv`` (and ``figures/*.png`` when a
    Chromium is available, or ``png=True``) into ``out_dir``, reading everything from the
    study's storage. ``png=False`` never tries to write PNGs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = read_report_data(study)
    trials_csv, pareto_csv = write_tables(data.records, data.objectives, data.front_configs, out_dir)
    figures = report_figures(data)
    html_path = out_dir / "report.html"
    atomic_write(html_path, lambda tmp: tmp.write_text(render_page(data, figures), encoding="utf-8"))

    pngs: list[Path] = []
    notice: str | None = None
    if png is not False:
        # through the module, so that tests can replace the browser lookup and the writer
        if png is None and images.find_chromium() is None:
            notice = images.NO_CHROME
        else:
            pngs, notice = images.write_pngs(figures, out_dir / "figures")
    return ReportFiles(html=html_path, trials_csv=trials_csv, pareto_csv=pareto_csv, pngs=pngs, png_notice=notice)
