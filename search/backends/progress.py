"""Progress of a running search: one line per finished trial, readable in a terminal and in
cluster logs alike (no carriage-return bars that turn into noise in a log file)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from search.reporting.front import FrontSummary

__all__ = ["Progress"]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Prints ``[#####-----] 12/50 | pareto 5 | best 0.912 | trial 17: acc 0.90 @ 4.1 MFLOPs, 8.3s | 8.0 s/trial | ETA 5m04s``."""

    def __init__(
        self, budget: int, already_done: int, out: TextIO | None = None, quiet: bool = False, prefix: str = ""
    ) -> None:
        self.prefix = prefix
        self.budget = budget
        self.start_done = already_done
        self.started = time.perf_counter()
        self.out = out or sys.stderr
        self.quiet = quiet

    def __getstate__(self) -> dict:
        # Ray pickles the searcher that holds this; an open stream does not pickle.
        state = dict(self.__dict__)
        state["out"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.out = self.out or sys.stderr

    def _bar(self, done: int, width: int = 20) -> str:
        filled = min(width, int(width * done / max(self.budget, 1)))
        return "[" + "#" * filled + "-" * (width - filled) + "]"

    def message(self, text: str) -> None:
        if not self.quiet:
            print(self.prefix + text, file=self.out, flush=True)

    def trial(self, done: int, front: FrontSummary, line: str) -> None:
        """The line of a finished trial of the budget."""
        elapsed = time.perf_counter() - self.started
        finished_here = done - self.start_done
        per_trial = elapsed / finished_here if finished_here > 0 else None
        parts = [f"{self._bar(done)} {done}/{self.budget}", f"pareto {front.size}"]
        if front.best is not None:
            parts.append(f"best acc {front.best:.4f}")
        if front.noise.measured:
            parts.append(_noise_text(front))
        parts.append(line)
        if per_trial is not None:
            parts.append(f"{per_trial:.1f} s/trial")
            parts.append(f"ETA {_duration(per_trial * max(self.budget - done, 0))}")
        self.message(" | ".join(parts))

    def start_confirmation(self, repeats: int, epochs: int) -> None:
        """Confirmation begins: its runs are timed from here on."""
        self.confirm_started = time.perf_counter()
        self.confirm_done = 0
        self.runs_wanted = repeats + 1
        self.epochs = epochs

    def repeat(self, front: FrontSummary, remaining: int, line: str) -> None:
        """The line of a finished confirmation run; ``remaining``: runs the plan still wants."""
        self.confirm_done += 1
        done, total = self.confirm_done, self.confirm_done + remaining
        per_run = (time.perf_counter() - self.confirm_started) / done
        parts = [
            f"[confirm] run {done} of ~{total} (+{done * self.epochs} of ~{total * self.epochs} epochs)",
            f"front {front.size}, {front.confirmed(self.runs_wanted)} with {self.runs_wanted}+ runs",
        ]
        if front.best is not None:
            parts.append(f"best mean acc {front.best:.4f}")
        if front.noise.measured:
            parts.append(_noise_text(front))
        parts += [line, f"{per_run:.1f} s/run", f"ETA {_duration(per_run * remaining)}"]
        self.message(" | ".join(parts))


def _noise_text(front: FrontSummary) -> str:
    noise = front.noise
    assert noise.sd is not None
    return f"sd {100 * noise.sd:.2f} pts ({noise.configurations} configs)"
