"""The report's words on noise: the study's seed-to-seed sd, how far the front is confirmed, which
front members are not resolved from each other, and whether confirmed per-layer configurations
beat the uniform baselines beyond the noise (:mod:`search.reporting.resolution`)."""

from __future__ import annotations

from search.objectives import OBJECTIVES
from search.reporting.configurations import Configuration, confirmation_candidates
from search.reporting.report.data import ReportData
from search.reporting.report.tables import esc
from search.reporting.resolution import (
    baseline_verdicts,
    group_names,
    resolution_rule,
    runs_wanted,
    unresolved_groups,
)

__all__ = ["confirmation_text", "noise_section"]


def confirmation_text(data: ReportData) -> str:
    """``--confirm 2: 4 of the front's 4 configurations have 3 or more runs; ...``."""
    wanted = runs_wanted(data.confirm)
    front = data.front_configs
    done = sum(1 for c in front if c.runs_count >= wanted)
    option = "--confirm" + (f" {data.confirm}" if data.confirm is not None else " (not recorded: 2 assumed)")
    if wanted <= 1:
        return f"{option}: the front is made of single runs, selected for their luck as much as for their accuracy"
    text = f"{option}: {done} of {len(front)} front configuration{'s' if len(front) != 1 else ''} {'has' if done == 1 else 'have'} {wanted} or more runs"
    _, close, left_out = confirmation_candidates(data.configs, data.objectives, data.noise)
    if close:
        text += f"; {sum(1 for c in close if c.runs_count >= wanted)} of {len(close)} within its noise confirmed too"
    if left_out:
        text += f"; {left_out} more within its noise not confirmed (at most as many as the front has members are)"
    return text


def _group_text(group: list[Configuration]) -> str:
    cost = OBJECTIVES["mflops"]
    names = group_names(group)
    listed = ", ".join(names[:-1]) + f" and {names[-1]}"
    low, high = (cost.format(c.mflops) for c in (group[0], group[-1]))
    accuracies = [100 * c.accuracy for c in group]
    return f"{listed} ({low}-{high} MFLOPs; means {min(accuracies):.2f}-{max(accuracies):.2f} %)"


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{esc(item)}</li>" for item in items) + "</ul>"


def noise_section(data: ReportData) -> str:
    """Two subsections of section 1: what the noise resolves, and the baselines' verdicts."""
    parts = ['<h3 id="noise">What the noise resolves</h3>']
    if not data.noise.measured:
        parts.append(
            '<p class="caption">The seed-to-seed noise of this study is not measured: no configuration was '
            "trained more than once, so no difference above can be told from noise, and the front keeps the "
            "configurations whose one training was lucky. Run the same command with <code>--confirm 2</code> "
            "to train the front's configurations again and compare them on their means.</p>"
        )
    else:
        parts.append(
            f'<p class="caption">{esc(data.noise.describe())}; {esc(resolution_rule())}. '
            f"{esc(confirmation_text(data))}.</p>"
        )
        groups = unresolved_groups(data.front_configs, data.objectives, data.noise)
        if groups:
            parts.append(
                '<p class="caption">Front members not resolved from each other (cheapest first, each within the '
                "noise of the next: the costlier ones are not shown to be more accurate):</p>"
                + _list([_group_text(g) for g in groups])
            )
        elif len(data.front_configs) > 1:
            parts.append('<p class="caption">Every member of the front is resolved from the next.</p>')
    parts.append('<h3 id="baselines">Per-layer choice against the uniform baselines</h3>')
    baselines = [c for c in data.configs if c.baseline is not None]
    verdicts = baseline_verdicts(data.configs, data.objectives, data.noise, data.confirm)
    if not baselines:
        parts.append(
            '<p class="caption">No uniform baseline was trained in this study (<code>--no-baselines</code>, or a '
            "budget under twice their number), so the report cannot say whether per-layer choice beats them.</p>"
        )
    elif not verdicts:
        if not data.noise.measured or data.confirm == 0:
            why = "the noise is not measured" if not data.noise.measured else "nothing was confirmed (--confirm 0)"
            how = " (run the same command with <code>--confirm 2</code>)"
        else:
            why = f"no per-layer configuration has the {runs_wanted(data.confirm)} runs of a confirmed one"
            how = ""
        parts.append(
            f'<p class="caption">Not answered: {esc(why)}{how}. A single run on the front was selected for its '
            "luck, and comparing it with a baseline would keep that luck.</p>"
        )
    else:
        parts.append(
            '<p class="caption">Each uniform baseline (one P or G for every layer, as the papers train them) '
            "against the confirmed per-layer configurations: the cheapest one that costs no more and is more "
            "accurate beyond the noise (accuracy difference ± its standard error), else the cheapest one that "
            "costs less at an accuracy the noise does not separate from the baseline's.</p>"
            + _list([v.describe() for v in verdicts])
        )
    return "".join(parts)
