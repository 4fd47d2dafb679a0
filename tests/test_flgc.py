"""Tests for layers.flgc: balanced assignment, the FLGC forward, training and logit decay."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layers import (
    FLGConv2d,
    balanced_assignment,
    create_conv2d,
    device_balanced_assignment,
    param_groups_without_logit_decay,
)
from layers.deferred_acceptance import batch_layout
from layers.flgc import default_rounds, device_balanced_assignments, straight_through_one_hot

DTYPE = torch.float64


# ---------------------------------------------------------------------------
# balanced_assignment
# ---------------------------------------------------------------------------


def assert_valid_balanced(assignment: torch.Tensor, rows: int, groups: int) -> None:
    assert assignment.shape == (rows,)
    assert assignment.dtype == torch.int64
    assert int(assignment.min()) >= 0 and int(assignment.max()) < groups
    assert torch.bincount(assignment, minlength=groups).tolist() == [rows // groups] * groups


def blocking_pairs(logits: torch.Tensor, assignment: torch.Tensor) -> list[tuple[int, int, int]]:
    """Deferred-acceptance stability violations (r, g, r2): row r strictly prefers group g to its
    own group, and g holds a row r2 with a strictly lower logit for g than r has."""
    pairs = []
    rows, groups = logits.shape
    for r in range(rows):
        own = int(assignment[r])
        for g in range(groups):
            if logits[r, g] > logits[r, own]:
                for r2 in (assignment == g).nonzero().flatten().tolist():
                    if logits[r2, g] < logits[r, g]:
                        pairs.append((r, g, r2))
    return pairs


SHAPES = [(1, 1), (4, 1), (4, 2), (4, 4), (6, 3), (12, 4), (16, 2), (30, 5), (32, 4), (64, 8), (16, 16)]


def logit_kinds(rows: int, groups: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    favour_zero = torch.randn(rows, groups, generator=g)
    favour_zero[:, 0] += 10.0
    return {
        "randn": torch.randn(rows, groups, generator=g),
        "small": torch.randn(rows, groups, generator=g) * 0.01,  # like the init
        "large": torch.randn(rows, groups, generator=g) * 100,
        "zeros": torch.zeros(rows, groups),  # all ties
        "int-ties": torch.randint(-2, 3, (rows, groups), generator=g).float(),
        "all-prefer-0": favour_zero,
        "same-row": torch.randn(1, groups, generator=g).expand(rows, groups).contiguous(),
        "float64": torch.randn(rows, groups, generator=g, dtype=torch.float64),
    }


@pytest.mark.parametrize("rows,groups", SHAPES)
def test_balanced_assignment_is_balanced_and_valid(rows, groups):
    for seed in range(5):
        for logits in logit_kinds(rows, groups, seed).values():
            assignment = balanced_assignment(logits)
            assert_valid_balanced(assignment, rows, groups)


def test_balanced_assignment_all_prefer_group_zero():
    torch.manual_seed(0)
    logits = torch.randn(12, 3)
    logits[:, 0] += 10.0
    assignment = balanced_assignment(logits)
    assert_valid_balanced(assignment, 12, 3)
    # group 0 takes the 4 rows with the highest logit for it
    assert set((assignment == 0).nonzero().flatten().tolist()) == set(logits[:, 0].topk(4).indices.tolist())


def test_balanced_assignment_does_not_touch_input_or_graph():
    torch.manual_seed(0)
    logits = torch.randn(8, 4, requires_grad=True)
    before = logits.detach().clone()
    assignment = balanced_assignment(logits)
    assert not assignment.requires_grad
    assert torch.equal(logits.detach(), before)


@pytest.mark.parametrize("rows,groups", [(4, 2), (6, 3), (12, 4), (32, 4), (64, 8), (16, 16)])
def test_balanced_assignment_equals_argmax_when_argmax_is_balanced(rows, groups):
    gen = torch.Generator().manual_seed(rows * 100 + groups)
    for _ in range(10):
        target = torch.randperm(rows, generator=gen) % groups  # a balanced assignment
        logits = torch.randn(rows, groups, generator=gen) + 5.0 * F.one_hot(target, groups)
        assert torch.equal(logits.argmax(1), target)
        assert torch.equal(balanced_assignment(logits), target)
    # and on unconstrained random logits, whenever the argmax happens to be balanced
    hits = 0
    for _ in range(200):
        logits = torch.randn(rows, groups, generator=gen)
        argmax = logits.argmax(1)
        if torch.bincount(argmax, minlength=groups).eq(rows // groups).all():
            hits += 1
            assert torch.equal(balanced_assignment(logits), argmax)
    if groups == 2:
        assert hits > 0


@pytest.mark.parametrize("rows,groups", [(5, 2), (7, 3), (3, 4), (10, 4), (9, 2)])
def test_balanced_assignment_rejects_indivisible_rows(rows, groups):
    with pytest.raises(ValueError):
        balanced_assignment(torch.randn(rows, groups))


def test_blocking_pairs_checker_detects_instability():
    """Sanity check of the checker on a hand-made unstable assignment."""
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.0], [0.0, 0.5]])
    assert blocking_pairs(logits, torch.tensor([0, 1, 0, 1])) == []
    # row 2 prefers group 0 (0.9) but group 0 holds row 1 with logit 0.0 < 0.9
    assert (2, 0, 1) in blocking_pairs(logits, torch.tensor([0, 0, 1, 1]))


@pytest.mark.parametrize("rows,groups", [(4, 2), (6, 3), (12, 4), (16, 2), (30, 5), (32, 4), (64, 8)])
def test_balanced_assignment_is_stable(rows, groups):
    """No row/group pair would both rather be matched together (the docstring promises deferred
    acceptance, whose result is stable in this sense)."""
    for seed in range(5):
        for name, logits in logit_kinds(rows, groups, seed).items():
            logits = logits.float()  # the function ranks in float32
            assignment = balanced_assignment(logits)
            pairs = blocking_pairs(logits, assignment)
            assert not pairs, f"{name} seed {seed}: blocking pairs (row, group, displaced row) {pairs[:5]}"


def test_balanced_assignment_is_stable_minimal_case():
    """Hand-made 6 x 3 case (capacity 2).

    Round 1: A proposes g0 and is accepted; X1, X2, B, C propose g1, which keeps X1, X2;
    D takes g2. Round 2: B and C both propose g0, which has one seat left: B wins, C falls to
    g2 although C (0.8) beats A (0.1) for g0. Deferred acceptance would let g0 drop A for C.
    """
    logits = torch.tensor(
        [
            [0.1, 0.0, 0.0],  # A
            [0.0, 5.0, 0.0],  # X1
            [0.0, 5.0, 0.0],  # X2
            [0.9, 4.0, 0.0],  # B
            [0.8, 3.0, 0.0],  # C
            [0.0, 0.0, 5.0],  # D
        ]
    )
    assignment = balanced_assignment(logits)
    assert_valid_balanced(assignment, 6, 3)
    assert blocking_pairs(logits, assignment) == [], f"assignment {assignment.tolist()}"


# ---------------------------------------------------------------------------
# FLGConv2d forward
# ---------------------------------------------------------------------------


def make_flgc(c, n, g, k=3, stride=1, bias=False, balanced=True, seed=0, logit_scale=1.0):
    torch.manual_seed(seed)
    layer = FLGConv2d(c, n, g, kernel_size=k, stride=stride, bias=bias, balanced=balanced).to(DTYPE)
    with torch.no_grad():
        layer.in_logits.normal_(0, logit_scale)
        layer.out_logits.normal_(0, logit_scale)
        if bias:
            layer.bias.normal_()
    return layer


FORWARD_CASES = [
    # (C, N, G, K, stride, bias)
    (8, 8, 2, 3, 1, False),
    (8, 12, 4, 3, 2, True),
    (6, 9, 3, 1, 1, False),
    (4, 4, 1, 3, 1, True),  # G = 1: dense conv
    (4, 8, 4, 3, 1, False),  # one channel per group
    (12, 6, 3, 5, 2, False),
]


@pytest.mark.parametrize("c,n,g,k,stride,bias", FORWARD_CASES)
def test_forward_equals_masked_conv(c, n, g, k, stride, bias):
    layer = make_flgc(c, n, g, k, stride, bias)
    x = torch.randn(2, c, 7, 7, dtype=DTYPE)
    in_groups, out_groups = layer.input_groups(), layer.output_groups()
    expected_mask = (out_groups[:, None] == in_groups[None, :]).to(DTYPE)
    mask = layer.connection_mask()
    assert torch.equal(mask, expected_mask)
    assert int(mask.sum()) == (c // g) * (n // g) * g
    assert (mask.sum(1) == c // g).all() and (mask.sum(0) == n // g).all()
    expected = F.conv2d(x, layer.weight * expected_mask[:, :, None, None], layer.bias, stride, k // 2)
    for mode in (True, False):
        layer.train(mode)
        with torch.no_grad():
            y = layer(x)
        assert y.shape == expected.shape
        torch.testing.assert_close(y, expected, atol=1e-12, rtol=1e-12)


def test_train_and_eval_forward_agree():
    layer = make_flgc(8, 12, 4, seed=3)
    x = torch.randn(2, 8, 6, 6, dtype=DTYPE)
    layer.train()
    y_train = layer(x)
    layer.eval()
    y_eval = layer(x)
    # straight-through: hard + soft - soft.detach() is the hard mask up to one rounding step
    torch.testing.assert_close(y_train, y_eval, atol=1e-12, rtol=1e-12)
    # and disconnected pairs are exactly disconnected in training too
    x_single = torch.zeros(1, 8, 3, 3, dtype=DTYPE)
    in_groups, out_groups = layer.input_groups(), layer.output_groups()
    x_single[0, 0] = 1.0
    layer.train()
    y = layer(x_single)
    disconnected = out_groups != in_groups[0]
    assert (y[0, disconnected] == 0).all()
    assert (y[0, ~disconnected] != 0).any()


def test_gradients_reach_logits_in_training_only():
    layer = make_flgc(8, 8, 2, seed=1)
    x = torch.randn(2, 8, 5, 5, dtype=DTYPE)
    layer.train()
    layer(x).pow(2).sum().backward()
    for logits in (layer.in_logits, layer.out_logits):
        assert logits.grad is not None
        assert torch.isfinite(logits.grad).all()
        assert logits.grad.abs().sum() > 0
    # the weight gradient is masked like the forward (disconnected entries get none)
    mask = layer.connection_mask()
    assert (layer.weight.grad[mask == 0] == 0).all()
    assert (layer.weight.grad[mask == 1] != 0).any()

    layer.zero_grad(set_to_none=True)
    layer.eval()
    layer(x).pow(2).sum().backward()
    assert layer.in_logits.grad is None and layer.out_logits.grad is None


def test_forward_float32_and_module_conversion():
    torch.manual_seed(0)
    layer = FLGConv2d(8, 8, 2)
    y = layer(torch.randn(1, 8, 4, 4))
    assert y.dtype == torch.float32 and y.shape == (1, 8, 4, 4)
    init_mask = layer.connection_mask()
    assert int(init_mask.sum()) == 4 * 4 * 2


# ---------------------------------------------------------------------------
# training: assignments move and stay balanced
# ---------------------------------------------------------------------------


def test_training_changes_assignment_and_keeps_balance():
    c = n = 8
    groups = 2
    gen = torch.Generator().manual_seed(1)
    teacher_in = torch.randperm(c, generator=gen) % groups
    teacher_out = torch.randperm(n, generator=gen) % groups
    teacher_mask = (teacher_out[:, None] == teacher_in[None, :]).float()
    teacher_weight = torch.randn(n, c, 1, 1, generator=gen) * teacher_mask[:, :, None, None]
    x = torch.randn(256, c, 1, 1, generator=gen)
    target = F.conv2d(x, teacher_weight)

    torch.manual_seed(0)
    student = FLGConv2d(c, n, groups, kernel_size=1)
    initial_mask = student.connection_mask()
    assert not torch.equal(initial_mask, teacher_mask)  # the task needs the grouping to move
    initial = (student.input_groups().clone(), student.output_groups().clone())
    optimizer = torch.optim.Adam(student.parameters(), lr=0.05)
    losses, changes, previous = [], 0, initial
    for _ in range(150):
        loss = F.mse_loss(student(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        current = (student.input_groups(), student.output_groups())
        assert torch.bincount(current[0], minlength=groups).tolist() == [c // groups] * groups
        assert torch.bincount(current[1], minlength=groups).tolist() == [n // groups] * groups
        assert int(student.connection_mask().sum()) == c * n // groups
        if not (torch.equal(current[0], previous[0]) and torch.equal(current[1], previous[1])):
            changes += 1
        previous = current
    assert changes > 0
    assert not torch.equal(student.connection_mask(), initial_mask)
    assert losses[-1] < 0.1 * losses[0]


# ---------------------------------------------------------------------------
# free (argmax) mode
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("c,n,g", [(8, 8, 2), (5, 7, 2), (12, 6, 4)])
def test_free_mode_is_argmax_and_counts_true_connections(c, n, g):
    layer = make_flgc(c, n, g, balanced=False, seed=c + n)
    with torch.no_grad():  # make the groups clearly unbalanced
        layer.in_logits[: c - 1, 0] += 3.0
        layer.out_logits[:, -1] -= 3.0
    in_groups, out_groups = layer.input_groups(), layer.output_groups()
    assert torch.equal(in_groups, layer.in_logits.argmax(1))
    assert torch.equal(out_groups, layer.out_logits.argmax(1))
    in_counts = torch.bincount(in_groups, minlength=g)
    out_counts = torch.bincount(out_groups, minlength=g)
    assert in_counts.unique().numel() > 1  # unbalanced
    mask = layer.connection_mask()
    assert int(mask.sum()) == int((in_counts * out_counts).sum())
    assert torch.equal(mask, (out_groups[:, None] == in_groups[None, :]).to(mask.dtype))
    x = torch.randn(2, c, 5, 5, dtype=DTYPE)
    expected = F.conv2d(x, layer.weight * mask[:, :, None, None], None, 1, 1)
    for mode in (True, False):
        layer.train(mode)
        torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=1e-12)


# ---------------------------------------------------------------------------
# weight decay groups
# ---------------------------------------------------------------------------


def test_param_groups_without_logit_decay():
    torch.manual_seed(0)
    model = nn.Sequential(
        FLGConv2d(4, 8, 2, bias=True),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        FLGConv2d(8, 8, 4, kernel_size=1, balanced=False),
        nn.Conv2d(8, 4, 3, padding=1, bias=True),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )
    wd = 5e-4
    param_groups = param_groups_without_logit_decay(model, wd)
    assert len(param_groups) == 2
    by_decay = {group["weight_decay"]: [id(p) for p in group["params"]] for group in param_groups}
    assert set(by_decay) == {wd, 0.0}
    decay, no_decay = by_decay[wd], by_decay[0.0]
    assert len(decay) == len(set(decay)) and len(no_decay) == len(set(no_decay))
    assert not set(decay) & set(no_decay)
    assert set(decay) | set(no_decay) == {id(p) for p in model.parameters()}

    flgcs = [m for m in model.modules() if isinstance(m, FLGConv2d)]
    for layer in flgcs:
        assert id(layer.in_logits) in no_decay and id(layer.out_logits) in no_decay
        assert id(layer.weight) in decay
        if layer.bias is not None:
            assert id(layer.bias) in no_decay
    assert id(model[4].weight) in decay and id(model[6].weight) in decay
    assert id(model[1].weight) in no_decay and id(model[1].bias) in no_decay

    # one SGD step with weight decay and zero gradients: logits untouched, weights decayed
    optimizer = torch.optim.SGD(param_groups, lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    logits_before = [p.detach().clone() for layer in flgcs for p in (layer.in_logits, layer.out_logits)]
    weights_before = [layer.weight.detach().clone() for layer in flgcs]
    optimizer.step()
    logits_after = [p.detach() for layer in flgcs for p in (layer.in_logits, layer.out_logits)]
    for before, after in zip(logits_before, logits_after):
        assert torch.equal(before, after)
    for before, layer in zip(weights_before, flgcs):
        torch.testing.assert_close(layer.weight.detach(), before * (1 - 0.1 * wd))


def test_param_groups_skip_frozen_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(FLGConv2d(4, 4, 2), nn.Conv2d(4, 4, 1))
    model[1].weight.requires_grad_(False)
    ids = [id(p) for group in param_groups_without_logit_decay(model, 1e-4) for p in group["params"]]
    assert id(model[1].weight) not in ids
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}


# ---------------------------------------------------------------------------
# factory and errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("stride,balanced", [(1, True), (2, False)])
def test_create_conv2d_builds_flgc(stride, balanced):
    torch.manual_seed(0)
    layer = create_conv2d(8, 12, 3, stride, layer_type="flgc", groups=4, balanced=balanced, bias=True)
    assert isinstance(layer, FLGConv2d)
    assert (layer.in_channels, layer.out_channels, layer.groups) == (8, 12, 4)
    assert (layer.kernel_size, layer.stride, layer.padding, layer.balanced) == (3, stride, 1, balanced)
    assert layer.bias is not None
    assert layer.in_logits.shape == (8, 4) and layer.out_logits.shape == (12, 4)
    y = layer(torch.randn(2, 8, 8, 8))
    assert y.shape == (2, 12, 8 // stride, 8 // stride)


@pytest.mark.parametrize("c,n,groups", [(8, 8, 3), (6, 8, 3), (8, 6, 4), (8, 8, 0), (8, 8, -1), (4, 4, 8)])
def test_illegal_groups_raise(c, n, groups):
    with pytest.raises(ValueError):
        create_conv2d(c, n, 3, layer_type="flgc", groups=groups)
    with pytest.raises(ValueError):
        FLGConv2d(c, n, groups)


def test_free_mode_allows_non_dividing_groups_but_not_zero():
    torch.manual_seed(0)
    layer = create_conv2d(8, 6, 3, layer_type="flgc", groups=3, balanced=False)
    assert layer(torch.randn(1, 8, 4, 4)).shape == (1, 6, 4, 4)
    with pytest.raises(ValueError):
        create_conv2d(8, 8, 3, layer_type="flgc", groups=0, balanced=False)


def test_unknown_layer_type_raises():
    with pytest.raises(ValueError):
        create_conv2d(8, 8, 3, layer_type="bogus")


# ---------------------------------------------------------------------------
# device_balanced_assignment and the fused training form (no host work in a step)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("rows,groups", SHAPES + [(256, 8), (64, 16)])
def test_device_assignment_equals_host_greedy(rows, groups):
    for seed in range(3):
        for name, logits in logit_kinds(rows, groups, seed).items():
            expected = balanced_assignment(logits)
            # the rounds (what a GPU runs), here on the CPU
            assert torch.equal(device_balanced_assignment(logits, host_loop_on_cpu=False), expected), name
            # a previous assignment only matters when the rounds do not settle
            previous = torch.arange(rows) % groups
            assert torch.equal(device_balanced_assignment(logits, previous, host_loop_on_cpu=False), expected), name
            # on the CPU the host loop answers (keeping a previous assignment still stable)
            assert torch.equal(device_balanced_assignment(logits), expected), name


@pytest.mark.parametrize("c,n,g", [(8, 12, 4), (64, 16, 8), (12, 6, 3), (32, 32, 16)])
def test_both_sides_solved_together_exactly(c, n, g):
    """The layer solves its input and output side as one block-diagonal problem."""
    for seed in range(3):
        layer = make_flgc(c, n, g, seed=seed, logit_scale=0.01)
        sides = device_balanced_assignments([layer.in_logits, layer.out_logits], [None, None], host_loop_on_cpu=False)
        assert torch.equal(sides[0], balanced_assignment(layer.in_logits))
        assert torch.equal(sides[1], balanced_assignment(layer.out_logits))
        assert torch.equal(layer.input_groups(), sides[0]) and torch.equal(layer.output_groups(), sides[1])


def test_device_assignment_keeps_previous_when_rounds_do_not_settle():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 8, generator=gen)
    previous = torch.randperm(64, generator=gen) % 8
    exact = balanced_assignment(logits)
    assert not torch.equal(previous, exact)
    rounds = dict(host_loop_on_cpu=False)
    assert torch.equal(device_balanced_assignment(logits, previous, rounds=0, **rounds), previous)
    # without a previous one the unsettled result is still balanced
    assert_valid_balanced(device_balanced_assignment(logits, rounds=0, **rounds), 64, 8)
    assert torch.equal(device_balanced_assignment(logits, previous, rounds=default_rounds(8), **rounds), exact)


# Sides of many layers at once: every size and group count of the built-in models' FLGC
# layers, both sides, plus small odd ones.
MANY_SIDES = [(64, 2), (128, 2), (512, 2), (64, 16), (512, 16), (960, 8), (24, 8), (6, 3), (30, 5), (16, 16), (4, 4)]


@pytest.mark.parametrize("sides", [MANY_SIDES, [(64, 4), (128, 4), (256, 4), (512, 4)]], ids=["mixed", "uniform"])
def test_many_layers_solved_as_one_batch_exactly(sides):
    """The rounds of a whole model's sides at once equal the host loop side by side, on every
    kind of logits; ``mixed`` group counts take per-side capacities, ``uniform`` the dummy
    rows that give every group the same seats (both layouts of the batch)."""
    assert batch_layout(tuple(sides), torch.device("cpu")).dummies == (sides != MANY_SIDES)
    for seed in range(2):
        for name in logit_kinds(4, 2, 0):
            logits = [logit_kinds(rows, groups, seed + rows + groups)[name] for rows, groups in sides]
            solved = device_balanced_assignments(logits, [None] * len(logits), host_loop_on_cpu=False)
            for side, got in zip(logits, solved):
                assert torch.equal(got, balanced_assignment(side)), f"{name} seed {seed} {tuple(side.shape)}"


@pytest.mark.parametrize("groups", [3, 4, 8, 16])
def test_default_rounds_are_enough_and_all_ties_need_them_all(groups):
    """G - 1 rounds settle every case (``deferred_acceptance.solve`` says why); with all
    logits tied every round fills one more group, so none fewer does."""
    ties = torch.zeros(4 * groups, groups)
    exact = balanced_assignment(ties)
    solo = dict(host_loop_on_cpu=False)
    assert default_rounds(groups) == groups - 1
    assert torch.equal(device_balanced_assignment(ties, **solo), exact)
    other = exact.flip(0)  # balanced, not the greedy's: what an unsettled side keeps
    assert torch.equal(device_balanced_assignment(ties, other, rounds=groups - 2, **solo), other)
    assert torch.equal(device_balanced_assignment(ties, other, rounds=groups - 1, **solo), exact)
    gen = torch.Generator().manual_seed(groups)
    for _ in range(200):  # small integer logits: many ties, long chains of rejections
        logits = torch.randint(0, 3, (groups * int(torch.randint(1, 4, (1,), generator=gen)), groups), generator=gen)
        assert torch.equal(device_balanced_assignment(logits.float(), **solo), balanced_assignment(logits.float()))


def reference_masked_weight(layer: FLGConv2d) -> torch.Tensor:
    """The straight-through masked weight built op by op (the form before the fused one)."""
    b_out = straight_through_one_hot(layer.out_logits, layer.output_groups())
    b_in = straight_through_one_hot(layer.in_logits, layer.input_groups())
    return layer.weight * (b_out @ b_in.t())[:, :, None, None]


@pytest.mark.parametrize("balanced", [True, False])
@pytest.mark.parametrize("kernel", [3, 1])
@pytest.mark.parametrize("reused", [False, True], ids=["fresh", "reused"])
def test_fused_training_form_matches_straight_through_reference(balanced, kernel, reused):
    """``reused``: the assignment of a step between reassignments (``reassign_every``), whose
    logits have moved since: its softmax is recomputed from the current logits."""
    layer = make_flgc(12, 8, 4, k=kernel, seed=5, balanced=balanced)
    x = torch.randn(2, 12, 6, 6, dtype=DTYPE)
    layer.train()
    if reused:
        layer.reassign_every = 2
        layer(x)
        with torch.no_grad():
            layer.in_logits.mul_(1.5)  # moved, but the assignment is the last one
        hard = layer.assignment_cache.last
    y = layer(x)
    if reused:
        assert torch.equal(layer.assignment_cache.last.mask, hard.mask)
    upstream = torch.randn_like(y)
    grads = torch.autograd.grad(y, (layer.weight, layer.in_logits, layer.out_logits), upstream)
    y_ref = F.conv2d(x, reference_masked_weight(layer), None, 1, kernel // 2)
    grads_ref = torch.autograd.grad(y_ref, (layer.weight, layer.in_logits, layer.out_logits), upstream)
    # the reference's hard + soft - soft.detach() is 0/1 only up to rounding; the fused form is exact
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    for got, want in zip(grads, grads_ref):
        assert want.abs().sum() > 0
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_hard_assignment_recomputed_only_when_logits_change():
    layer = make_flgc(8, 8, 2, seed=2)
    first = layer.input_groups()
    assert layer.input_groups() is first  # cached: no work while the logits hold
    with torch.no_grad():  # every channel now clearly prefers the other group
        layer.in_logits.copy_(10.0 * F.one_hot(1 - first, 2))
    assert torch.equal(layer.input_groups(), 1 - first)


def test_seed_assignment_is_where_the_next_assignment_starts():
    """A handed-over assignment that is still stable under the logits is kept (the host loop's
    cheap path), so ties resolve as they did where it came from: with all logits tied every
    balanced assignment is stable, and the greedy alone would pick another one."""
    layer = make_flgc(8, 12, 4, seed=3)
    with torch.no_grad():
        layer.in_logits.zero_()
        layer.out_logits.zero_()
    greedy = (balanced_assignment(layer.in_logits), balanced_assignment(layer.out_logits))
    in_groups, out_groups = greedy[0].flip(0), greedy[1].flip(0)
    assert not torch.equal(in_groups, greedy[0])
    layer.seed_assignment(in_groups, out_groups)
    assert torch.equal(layer.input_groups(), in_groups) and torch.equal(layer.output_groups(), out_groups)
    hard = layer.assignment()
    assert torch.equal(hard.mask, (out_groups[:, None] == in_groups[None, :]).to(DTYPE))
    assert torch.equal(hard.b_in.argmax(1), in_groups) and torch.equal(hard.b_out.argmax(1), out_groups)


def test_reassign_every_reuses_the_assignment_between_steps_but_trains_the_logits():
    layer = make_flgc(8, 8, 2, seed=2)
    layer.reassign_every = 3
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(2, 8, 5, 5, dtype=DTYPE)
    seen = []
    for _ in range(6):
        layer(x).sum().backward()
        assert layer.in_logits.grad.abs().sum() > 0  # straight-through gradient at every step
        seen.append(layer.assignment_cache.last.in_groups)  # what this step's forward used
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():  # a different assignment whenever it is computed
            layer.in_logits.copy_(10.0 * F.one_hot(1 - seen[-1], 2))
    assert seen[0] is seen[1] is seen[2] and seen[3] is seen[4] is seen[5]
    assert torch.equal(seen[3], 1 - seen[0])
    with pytest.raises(ValueError):
        FLGConv2d(8, 8, 2, reassign_every=0)
