"""The report's figures as PNG files, written by kaleido in a Chromium; without one the report
is the HTML page alone, with a one-line notice."""

from __future__ import annotations

import shutil
from pathlib import Path

import plotly.graph_objects as go

__all__ = ["NO_CHROME", "find_chromium", "write_pngs"]

NO_CHROME = (
    "PNG figures skipped: no Chromium found (apt-get install chromium, or plotly_get_chrome); "
    "the HTML report has every figure"
)


def find_chromium() -> str | None:
    """The Chromium kaleido would use (its own lookup, then PATH), or None."""
    try:
        from choreographer.browsers.chromium import Chromium

        found = Chromium.find_browser(skip_local=False)
        if found:
            return str(found)
    except Exception:  # noqa: BLE001  (best effort: fall back to PATH)
        pass
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def write_pngs(figures: dict[str, go.Figure], folder: Path) -> tuple[list[Path], str | None]:
    """Write every figure as a PNG with kaleido in one browser session; on the first error stop
    and return a one-line notice."""
    try:
        import kaleido
    except ImportError:
        return [], "PNG figures skipped: kaleido is not installed (pip install kaleido); the HTML report has them all"
    folder.mkdir(parents=True, exist_ok=True)
    specs = []
    for name, fig in figures.items():
        height = fig.layout.height or 500
        specs.append(
            {
                "fig": fig.to_dict(),
                "path": folder / f"{name}.png",
                "opts": {"format": "png", "width": 1100, "height": height, "scale": 2},
            }
        )
    try:
        # A generous bound: Chromium starting on a busy machine can take a minute or more.
        kaleido.write_fig_from_object_sync(specs, kopts={"mathjax": False, "timeout": 300}, cancel_on_error=True)
    except Exception as err:  # noqa: BLE001  (any failure of the browser only costs the PNGs)
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        written = [s["path"] for s in specs if s["path"].is_file()]
        return written, f"PNG figures not written: kaleido failed ({reason}); the HTML report has every figure"
    written = [s["path"] for s in specs if s["path"].is_file()]
    missing = len(specs) - len(written)
    return written, (
        f"PNG figures: {missing} of {len(specs)} were not written; the HTML report has every figure"
        if missing
        else None
    )
