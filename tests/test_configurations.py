"""Configurations and their runs (search/reporting/configurations.py), what the noise resolves
(search/reporting/resolution.py) and the confirmation plan (search/strategies/confirmation.py),
on records built here: every expectation is computed by brute force in the test."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from search.reporting.configurations import (
    RESOLVE_Z,
    compare,
    config_key,
    config_numbers,
    confirmation_candidates,
    front_configurations,
    group_configurations,
    measure_noise,
)
from search.reporting.front import hypervolume_over_trials, pareto_records
from search.reporting.pareto import hypervolume
from search.reporting.resolution import baseline_verdicts, unresolved_groups
from search.storage import TrialRecord
from search.strategies.confirmation import contested, plan_confirmation

OBJECTIVES = ["accuracy", "mflops"]


def record(number: int, arch: int, accuracy: float, mflops: float, **extra) -> TrialRecord:
    """A feasible complete run of configuration ``arch`` (unless ``state``/``status`` say otherwise)."""
    state, status = extra.pop("state", "COMPLETE"), extra.pop("status", "ok")
    user_attrs = {"architecture": {"model": "vgg16", "id": arch}, **extra.pop("user_attrs", {})}
    return TrialRecord(
        number=number,
        state=state,
        status=status,
        values={"accuracy": accuracy, "mflops": mflops} if state == "COMPLETE" else {},
        architecture=None,
        mflops=mflops,
        mflops_all_ops=mflops,
        params=100,
        curve=[],
        train_seconds=1.0,
        device="cpu",
        seed=number,
        baseline=extra.pop("baseline", None),
        hyperparameters=extra.pop("hyperparameters", {}),
        fail_reason=None,
        datetime_start=None,
        datetime_complete=None,
        epochs_run=1,
        user_attrs=user_attrs,
    )


def brute_front(points: dict[int, tuple[float, float]]) -> set[int]:
    """Numbers whose (accuracy, mflops) no other point dominates."""
    return {
        n
        for n, (a, m) in points.items()
        if not any((b >= a and k <= m) and (b > a or k < m) for o, (b, k) in points.items() if o != n)
    }


def random_study(seed: int, configs: int = 12, repeats: int = 8) -> list[TrialRecord]:
    rng = random.Random(seed)
    truth = {c: (rng.uniform(0.5, 0.9), round(rng.uniform(1, 20), 2)) for c in range(configs)}
    records = [record(c, c, truth[c][0] + rng.gauss(0, 0.03), truth[c][1]) for c in range(configs)]
    for n in range(configs, configs + repeats):
        c = rng.randrange(configs)
        records.append(record(n, c, truth[c][0] + rng.gauss(0, 0.03), truth[c][1]))
    return records


# ------------------------------------------------------------------------- grouping and means


@pytest.mark.parametrize("seed", range(5))
def test_configurations_are_grouped_and_averaged(seed):
    records = random_study(seed)
    # a failed run and an early-stopped run of configuration 0 are no runs of it
    records += [
        record(90, 0, 0.0, 1.0, state="FAIL", status="failed"),
        record(91, 0, 0.99, 1.0, status="early_stopped"),
    ]
    configs = group_configurations(records, OBJECTIVES)
    by_arch: dict[int, list[TrialRecord]] = {}
    for r in records:
        if r.state == "COMPLETE" and r.status == "ok":
            by_arch.setdefault(r.user_attrs["architecture"]["id"], []).append(r)
    assert len(configs) == len(by_arch)
    for c in configs:
        runs = by_arch[c.record.user_attrs["architecture"]["id"]]
        assert [r.number for r in c.runs] == sorted(r.number for r in runs)
        assert c.number == min(r.number for r in runs)
        assert c.accuracy == pytest.approx(statistics.fmean(r.values["accuracy"] for r in runs))
        expected_sd = statistics.stdev(r.values["accuracy"] for r in runs) if len(runs) > 1 else None
        assert c.accuracy_sd == (pytest.approx(expected_sd) if expected_sd is not None else None)


def test_hyperparameters_are_part_of_a_configuration():
    a = record(0, 1, 0.8, 5.0, hyperparameters={"lr": 0.1})
    b = record(1, 1, 0.7, 5.0, hyperparameters={"lr": 0.2})
    c = record(2, 1, 0.6, 5.0, hyperparameters={"lr": 0.1})
    assert config_key(a) == config_key(c) != config_key(b)
    assert sorted(c.runs_count for c in group_configurations([a, b, c], OBJECTIVES)) == [1, 2]


def test_config_numbers_name_the_first_run_and_follow_repeats():
    records = [
        record(0, 7, 0.0, 5.0, state="FAIL", status="failed"),
        record(1, 7, 0.8, 5.0),
        record(2, 8, 0.7, 4.0),
        record(3, 7, 0.7, 5.0, user_attrs={"repeat_of": 1}),
    ]
    waiting = record(4, 0, 0.0, 0.0, state="WAITING", status="queued", user_attrs={"repeat_of": 2})
    del waiting.user_attrs["architecture"]  # a queued trial has no architecture yet
    numbers = config_numbers([*records, waiting])
    assert numbers == {0: 1, 1: 1, 2: 2, 3: 1, 4: 2}


@pytest.mark.parametrize("seed", range(8))
def test_front_is_the_brute_force_front_of_the_means(seed):
    records = random_study(seed, configs=15, repeats=12)
    configs = group_configurations(records, OBJECTIVES)
    means = {c.number: (c.accuracy, c.record.values["mflops"]) for c in configs}
    front = front_configurations(configs, OBJECTIVES)
    assert {c.number for c in front} == brute_front(means)
    assert [r.number for r in pareto_records(records, OBJECTIVES)] == sorted(c.number for c in front)


@pytest.mark.parametrize("seed", range(4))
def test_hypervolume_history_is_that_of_the_means_after_each_run(seed):
    records = random_study(seed, configs=8, repeats=10)
    order, history = hypervolume_over_trials(records, OBJECTIVES, {"accuracy": 0.0, "mflops": 25.0})
    for i in range(len(order)):
        configs = group_configurations(order[: i + 1], OBJECTIVES)
        points = [(c.accuracy, c.record.values["mflops"]) for c in configs]
        assert history[i] == pytest.approx(hypervolume(points, ("max", "min"), (0.0, 25.0)))
    assert any(b < a for a, b in itertools.pairwise(history)), "a repeat that lowers a mean lowers the hypervolume"


# ------------------------------------------------------------------------- noise and resolution


def test_noise_is_the_pooled_within_configuration_sd():
    records = random_study(3, configs=6, repeats=14)
    configs = group_configurations(records, OBJECTIVES)
    repeated = [c for c in configs if c.runs_count > 1]
    squares = sum(sum((r.values["accuracy"] - c.accuracy) ** 2 for r in c.runs) for c in repeated)
    freedom = sum(c.runs_count - 1 for c in repeated)
    noise = measure_noise(configs)
    assert noise.sd == pytest.approx(math.sqrt(squares / freedom))
    assert noise.configurations == len(repeated) and noise.runs == sum(c.runs_count for c in repeated)
    assert f"{100 * noise.sd:.2f} points" in noise.describe()
    assert "not measured" in measure_noise(group_configurations(random_study(3, 6, 0), OBJECTIVES)).describe()


def test_resolved_means_differ_by_more_than_two_standard_errors():
    # three runs of a at 0.90 +- 0.01, three of b at 0.88 +- 0.01: sd 0.01, se 0.01 * sqrt(2/3)
    runs = [record(0, 1, 0.89, 5.0), record(1, 1, 0.90, 5.0), record(2, 1, 0.91, 5.0)]
    runs += [record(3, 2, 0.87, 6.0), record(4, 2, 0.88, 6.0), record(5, 2, 0.89, 6.0)]
    a, b = group_configurations(runs, OBJECTIVES)
    noise = measure_noise([a, b])
    assert noise.sd == pytest.approx(0.01)
    comparison = compare(a, b, OBJECTIVES, noise)
    assert comparison.standard_error == pytest.approx(0.01 * math.sqrt(2 / 3))
    assert comparison.difference == pytest.approx(0.02)
    assert comparison.resolved == (0.02 > RESOLVE_Z * 0.01 * math.sqrt(2 / 3))
    assert comparison.dominates_beyond_noise and compare(b, a, OBJECTIVES, noise).dominated_beyond_noise
    assert not compare(a, b, OBJECTIVES, measure_noise([])).resolved  # unmeasured noise resolves nothing


def test_unresolved_groups_chain_front_members_within_the_noise():
    # four front members (cheaper is less accurate); noise sd 0.01 from three runs each
    means = {1: (0.80, 2.0), 2: (0.805, 3.0), 3: (0.90, 4.0), 4: (0.902, 5.0)}
    runs, n = [], 0
    for arch, (acc, mf) in means.items():
        for delta in (-0.01, 0.0, 0.01):
            runs.append(record(n, arch, acc + delta, mf))
            n += 1
    configs = group_configurations(runs, OBJECTIVES)
    noise = measure_noise(configs)
    groups = unresolved_groups(front_configurations(configs, OBJECTIVES), OBJECTIVES, noise)
    ids = [[c.record.user_attrs["architecture"]["id"] for c in g] for g in groups]
    assert ids == [[1, 2], [3, 4]]


def test_baselines_are_judged_only_against_confirmed_configurations():
    noise_runs = [record(100 + i, 50, 0.5 + d, 30.0) for i, d in enumerate((-0.01, 0.0, 0.01))]  # sd 0.01
    baseline = [record(0, 1, 0.80, 10.0, baseline="4")]
    beating = [record(1 + i, 2, 0.86 + d, 8.0) for i, d in enumerate((-0.01, 0.0, 0.01))]  # 3 runs
    lucky = [record(10, 3, 0.99, 5.0)]  # one run: not confirmed, never a witness
    configs = group_configurations(noise_runs + baseline + beating + lucky, OBJECTIVES)
    noise = measure_noise(configs)
    (verdict,) = baseline_verdicts(configs, OBJECTIVES, noise, confirm=2)
    assert verdict.beaten_by is not None and verdict.beaten_by.number == 1
    assert "beaten beyond the noise by #1" in verdict.describe() and "20 % fewer MFLOPs" in verdict.describe()
    assert baseline_verdicts(configs, OBJECTIVES, noise, confirm=0) == []  # nothing confirmed: no claim
    # a confirmed configuration within the noise of the baseline only matches it
    close = [record(20 + i, 4, 0.805 + d, 9.0) for i, d in enumerate((-0.01, 0.0, 0.01))]
    configs = group_configurations(noise_runs + baseline + close, OBJECTIVES)
    (verdict,) = baseline_verdicts(configs, OBJECTIVES, measure_noise(configs), confirm=2)
    assert verdict.beaten_by is None and verdict.matched_by is not None and "within the noise" in verdict.describe()


# ------------------------------------------------------------------------- the confirmation plan


def _runs(plan_records: list[TrialRecord], repeats: int = 2, pending: dict[int, int] | None = None):
    return plan_confirmation(plan_records, OBJECTIVES, repeats, pending or {})


def test_plan_confirms_the_front_first_and_subtracts_pending_repeats():
    records = [record(0, 0, 0.9, 10.0), record(1, 1, 0.8, 5.0), record(2, 2, 0.7, 8.0)]  # 2 is dominated
    plan = _runs(records)
    assert plan.missing == {0: 2, 1: 2} and set(plan.order) == {0, 1} and plan.front_size == 2
    plan = _runs(records, pending={0: 2, 1: 1})
    assert plan.missing == {1: 1} and plan.next == 1
    assert _runs(records, repeats=0).next is None


def test_a_repeat_that_falls_off_the_front_hands_its_place_on():
    lucky = [record(0, 0, 0.95, 10.0)]
    runner_up = [record(1, 1, 0.90, 11.0)]
    plan = _runs(lucky + runner_up)
    assert plan.missing == {0: 2}  # the runner-up is dominated by the lucky run
    # the lucky configuration's repeats come out low: its mean falls below the runner-up's
    confirmed = lucky + runner_up + [record(2, 0, 0.80, 10.0), record(3, 0, 0.81, 10.0)]
    plan = _runs(confirmed)
    assert 1 in plan.missing and plan.missing[1] == 2 and plan.order[0] == 1


def test_plan_confirms_configurations_within_the_noise_at_most_as_many_as_the_front():
    records = [record(n, n, 0.9 - 0.01 * n, 5.0 + n) for n in range(10)]  # each dominated by the cheaper ones
    records += [record(10, 0, 0.88, 5.0), record(11, 0, 0.92, 5.0)]  # configuration 0: mean 0.9, sd 0.02
    configs = group_configurations(records, OBJECTIVES)
    noise = measure_noise(configs)
    front, close, left_out = confirmation_candidates(configs, OBJECTIVES, noise)
    assert [c.number for c in front] == [0]
    within = [
        c for c in configs if c.number != 0 and not compare(c, front[0], OBJECTIVES, noise).dominated_beyond_noise
    ]
    assert len(close) == min(len(front), len(within)) and left_out == len(within) - len(close)
    # the closest first: the least far below the front member, in standard errors
    assert close[0].number == min(within, key=lambda c: front[0].accuracy - c.accuracy).number
    plan = _runs(records)
    assert set(plan.missing) == {c.number for c in close} and plan.left_out == left_out


def _confirmed_runs(start: int, arch: int, accuracies: list[float], mflops: float) -> list[TrialRecord]:
    return [record(start + i, arch, a, mflops) for i, a in enumerate(accuracies)]


# A resolved lead (B over A: 3 points, 2 standard errors are 1.6) and an unresolved one (C over B: 1 point).
# A configuration's number is its first trial's: A is 0, B 3, C 6.
RACE_STUDY = (
    _confirmed_runs(0, 0, [0.80, 0.81, 0.79], 5.0)
    + _confirmed_runs(3, 1, [0.83, 0.82, 0.84], 10.0)
    + _confirmed_runs(6, 2, [0.84, 0.85, 0.83], 12.0)
)


def test_racing_gives_one_more_run_to_a_member_whose_lead_is_not_resolved():
    configs = group_configurations(RACE_STUDY, OBJECTIVES)
    front = front_configurations(configs, OBJECTIVES)
    assert [c.number for c in contested(front, OBJECTIVES, measure_noise(configs))] == [6]
    plan = plan_confirmation(RACE_STUDY, OBJECTIVES, 2, {}, race=3)
    assert plan.missing == {6: 1} and plan.raced == 1
    assert plan_confirmation(RACE_STUDY, OBJECTIVES, 2, {}, race=0).next is None  # --race 0: no racing
    assert plan_confirmation(RACE_STUDY, OBJECTIVES, 2, {6: 1}, race=3).next is None  # one at a time
    assert plan_confirmation(RACE_STUDY, OBJECTIVES, 0, {}, race=3).next is None  # --confirm 0: single runs


def test_racing_stops_at_its_cap_and_when_the_lead_is_resolved():
    capped = RACE_STUDY + _confirmed_runs(9, 2, [0.84, 0.85, 0.83], 12.0)  # 6 runs = 2 + 1 + 3
    assert plan_confirmation(capped, OBJECTIVES, 2, {}, race=3).next is None
    assert plan_confirmation(capped, OBJECTIVES, 2, {}, race=4).missing == {6: 1}
    # further runs of C come out low: its mean falls below B's and it leaves the front
    fallen = RACE_STUDY + _confirmed_runs(9, 2, [0.81, 0.815], 12.0)
    plan = plan_confirmation(fallen, OBJECTIVES, 2, {}, race=3)
    assert 6 not in plan.missing and plan.next is None
