"""What a study's noise resolves, in words: which front members are not resolved from each other,
and, the question the tool exists for, whether a confirmed per-layer configuration beats each
uniform baseline (the papers' one-P or one-G-for-every-layer models) beyond the noise.

Claims are made only from *confirmed* configurations (those with the runs ``--confirm`` asks
for): a single run on the front was selected for its luck, and testing it against the noise
after selecting it would keep the luck.
"""

from __future__ import annotations

from dataclasses import dataclass

from search.objectives import OBJECTIVES
from search.reporting.configurations import RESOLVE_Z, Comparison, Configuration, Noise, compare
from search.reporting.labels import baseline_label

__all__ = [
    "BaselineVerdict",
    "baseline_name",
    "baseline_verdicts",
    "confirmed",
    "group_names",
    "resolution_rule",
    "runs_wanted",
    "unresolved_groups",
]

# The --confirm of a study made before it was recorded: the tool's default.
DEFAULT_CONFIRM = 2


def runs_wanted(confirm: int | None) -> int:
    """Runs a configuration needs to count as confirmed under ``--confirm`` (None: unrecorded)."""
    return (DEFAULT_CONFIRM if confirm is None else confirm) + 1


def confirmed(configs: list[Configuration], confirm: int | None) -> list[Configuration]:
    """The configurations with at least the runs ``--confirm`` asks for (none with ``--confirm 0``)."""
    wanted = runs_wanted(confirm)
    return [c for c in configs if wanted > 1 and c.runs_count >= wanted]


def _points(comparison: Comparison) -> str:
    """``+1.20 ± 0.45 points`` (the standard error of the difference)."""
    text = f"{100 * comparison.difference:+.2f}"
    if comparison.standard_error is not None:
        text += f" ± {100 * comparison.standard_error:.2f}"
    return text + " points"


def _saving(a: Configuration, b: Configuration) -> str:
    """How much cheaper ``a`` is than ``b`` in MFLOPs, in words."""
    mine, theirs = a.mflops, b.mflops
    if theirs <= 0 or mine >= theirs:
        return "at the same MFLOPs" if mine == theirs else "at more MFLOPs"
    return f"at {100 * (1 - mine / theirs):.0f} % fewer MFLOPs"


def _name(c: Configuration) -> str:
    cost = OBJECTIVES["mflops"].format(c.mflops)
    runs = f"{c.runs_count} run{'s' if c.runs_count != 1 else ''}"
    label = f"{baseline_name(c)} " if c.baseline is not None else ""
    return f"{label}#{c.number} ({100 * c.accuracy:.2f} % over {runs}, {cost} MFLOPs)"


def baseline_name(c: Configuration) -> str:
    """A baseline's short name: ``P4``, ``G8``, ``dense`` or its own (``flgc-paper``)."""
    return baseline_label(c.record)


# A group of front members the noise does not resolve names at most this many of them (a large
# study's front can have hundreds within the noise of each other).
MAX_NAMED = 12


def group_names(group: list[Configuration]) -> list[str]:
    """``#n`` of every member of ``group``; of a large one, its first members, how many more, and
    its last (the costliest)."""
    names = [f"#{c.number}" for c in group]
    if len(names) > MAX_NAMED:
        names = [*names[: MAX_NAMED - 2], f"{len(names) - MAX_NAMED + 1} more", names[-1]]
    return names


def unresolved_groups(front: list[Configuration], objectives: list[str], noise: Noise) -> list[list[Configuration]]:
    """Runs of front members, cheapest first, each not resolved from the next (their accuracies
    differ by no more than the noise): within such a run the more expensive members are not
    shown to be more accurate. Groups of one are left out; with unmeasured noise, nothing is
    resolved and the whole front is one group."""
    ordered = sorted(front, key=lambda c: (c.mflops, c.number))
    groups: list[list[Configuration]] = []
    current: list[Configuration] = ordered[:1]
    for previous, member in zip(ordered, ordered[1:]):
        if compare(member, previous, objectives, noise).resolved:
            groups.append(current)
            current = [member]
        else:
            current.append(member)
    groups.append(current)
    return [g for g in groups if len(g) > 1]


@dataclass(frozen=True)
class BaselineVerdict:
    """A uniform baseline against the confirmed configurations: the cheapest one that dominates
    it beyond the noise (``beaten_by``), else the cheapest that costs less and is not resolved
    from it (``matched_by``), else neither."""

    baseline: Configuration
    beaten_by: Configuration | None
    matched_by: Configuration | None
    comparison: Comparison | None  # of the configuration named against the baseline
    others: int  # further confirmed configurations that beat (or match) it

    def describe(self) -> str:
        head = _name(self.baseline)
        if self.beaten_by is not None:
            assert self.comparison is not None
            more = f" (and {self.others} more)" if self.others else ""
            return (
                f"{head}: beaten beyond the noise by #{self.beaten_by.number}{more}, "
                f"{_points(self.comparison)} {_saving(self.beaten_by, self.baseline)}"
            )
        if self.matched_by is not None:
            assert self.comparison is not None
            return (
                f"{head}: not beaten beyond the noise; #{self.matched_by.number} matches it "
                f"{_saving(self.matched_by, self.baseline)} ({_points(self.comparison)}, within the noise)"
            )
        return f"{head}: no confirmed configuration costs no more and is more accurate beyond the noise"


def baseline_verdicts(
    configs: list[Configuration], objectives: list[str], noise: Noise, confirm: int | None
) -> list[BaselineVerdict]:
    """One verdict per baseline configuration (cheapest first), against the confirmed
    configurations that are not baselines. Empty when the noise is not measured or nothing is
    confirmed: then no claim can be made."""
    challengers = [c for c in confirmed(configs, confirm) if c.baseline is None]
    baselines = sorted((c for c in configs if c.baseline is not None), key=lambda c: c.mflops)
    if not noise.measured or not challengers:
        return []
    verdicts = []
    by_cost = sorted(challengers, key=lambda c: (c.mflops, c.number))
    for b in baselines:
        comparisons = [(c, compare(c, b, objectives, noise)) for c in by_cost]
        beating = [(c, k) for c, k in comparisons if k.dominates_beyond_noise]
        if beating:
            c, k = beating[0]
            verdicts.append(BaselineVerdict(b, c, None, k, len(beating) - 1))
            continue
        matching = [(c, k) for c, k in comparisons if k.cheaper and k.no_costlier and not k.resolved]
        if matching:
            c, k = matching[0]
            verdicts.append(BaselineVerdict(b, None, c, k, len(matching) - 1))
        else:
            verdicts.append(BaselineVerdict(b, None, None, None, 0))
    return verdicts


def resolution_rule() -> str:
    """The rule, in words, for captions."""
    return (
        f"two means are resolved when they differ by more than {RESOLVE_Z:g} standard errors of their difference, "
        "sd × √(1/n₁ + 1/n₂), with sd the study's seed-to-seed sd"
    )
