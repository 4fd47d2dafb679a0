"""Tests for layers.hetconv against slow, obviously-correct references of the paper's layout.

HetConv (Singh et al., CVPR 2019), strided layout: filter i has a KxK kernel on input channel j
when ``(j - i) mod P == 0`` and a 1x1 kernel otherwise. ``HetConv2d`` implements the block
layout (filter block g has KxK kernels on channel block g, 1x1 kernels elsewhere, all in one
masked dense weight); the two are equal up to a permutation of input channels and filters,
which these tests work out explicitly. The layer as it was with two weights (a grouped KxK
conv and a masked 1x1 conv) is kept here as a reference too: the one-weight layer starts
and trains as it did.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layers import HetConv2d, create_conv2d, hetconv_block_mask, hetconv_weight_mask, upgrade_hetconv_state

DTYPE = torch.float64


# ---------------------------------------------------------------------------
# references (strided layout of the paper)
# ---------------------------------------------------------------------------


def strided_kxk(n_filters: int, n_channels: int, part: int) -> torch.Tensor:
    """(N, M) bool: True where filter i has a KxK kernel on channel j, i.e. (j - i) mod P == 0."""
    i = torch.arange(n_filters)[:, None]
    j = torch.arange(n_channels)[None, :]
    return (j - i) % part == 0


def reference_loop(x, big, small, part, stride, bias=None):
    """Per-filter, per-channel loop: sum of single-channel convolutions.

    ``big[i, j]`` (KxK) is used where filter i has a KxK kernel on channel j, ``small[i, j]``
    (scalar) is the 1x1 kernel elsewhere. Unused entries get zero gradient.
    """
    n_filters, n_channels, k, _ = big.shape
    kxk = strided_kxk(n_filters, n_channels, part)
    outputs = []
    for i in range(n_filters):
        acc = 0
        for j in range(n_channels):
            xj = x[:, j : j + 1]
            if kxk[i, j]:
                acc = acc + F.conv2d(xj, big[i, j][None, None], stride=stride, padding=k // 2)
            else:
                acc = acc + F.conv2d(xj, small[i, j].reshape(1, 1, 1, 1), stride=stride)
        if bias is not None:
            acc = acc + bias[i]
        outputs.append(acc)
    return torch.cat(outputs, dim=1)


def reference_dense_weight(big, small, part):
    """Dense KxK weight of the strided layer: a 1x1 kernel with "same" padding is a KxK kernel
    that is zero except at its centre."""
    n_filters, n_channels, k, _ = big.shape
    kxk = strided_kxk(n_filters, n_channels, part)
    centre = torch.zeros_like(big)
    centre[:, :, k // 2, k // 2] = small
    return torch.where(kxk[:, :, None, None], big, centre)


def reference_dense(x, big, small, part, stride, bias=None):
    k = big.shape[-1]
    return F.conv2d(x, reference_dense_weight(big, small, part), bias, stride=stride, padding=k // 2)


def block_position(n: int, part: int) -> torch.Tensor:
    """Strided index j -> position in the block layout: (j mod P) * (n / P) + j // P."""
    j = torch.arange(n)
    return (j % part) * (n // part) + j // part


def load_strided_into_block(layer: HetConv2d, big, small, bias=None):
    """Copy strided-layout weights into ``layer`` (block layout) through the permutation, as
    the grouped KxK weight and the 1x1 weight of the block form (``load_parts``)."""
    n_filters, n_channels, k, _ = big.shape
    part = layer.part
    pos_in = block_position(n_channels, part)
    pos_out = block_position(n_filters, part)
    kxk = strided_kxk(n_filters, n_channels, part)
    grouped = torch.zeros(n_filters, n_channels // part, k, k, dtype=big.dtype)
    pointwise = torch.zeros(n_filters, n_channels, 1, 1, dtype=big.dtype)
    for i in range(n_filters):
        for j in range(n_channels):
            if kxk[i, j]:
                # Filter block i % P sees channel block j % P == i % P; j // P is the
                # channel's index inside its block.
                grouped[pos_out[i], j // part] = big[i, j]
            else:
                pointwise[pos_out[i], pos_in[j], 0, 0] = small[i, j]
    layer.load_parts(grouped, pointwise if part > 1 else None)
    if bias is not None:
        with torch.no_grad():
            layer.bias[pos_out] = bias


def random_strided_params(n_filters, n_channels, k, with_bias, seed):
    g = torch.Generator().manual_seed(seed)
    big = torch.randn(n_filters, n_channels, k, k, generator=g, dtype=DTYPE)
    small = torch.randn(n_filters, n_channels, generator=g, dtype=DTYPE)
    bias = torch.randn(n_filters, generator=g, dtype=DTYPE) if with_bias else None
    return big, small, bias


CASES = [
    # (M, N, P, stride, bias, K)
    (4, 4, 1, 1, False, 3),  # P = 1: plain conv
    (4, 6, 1, 2, True, 3),  # P = 1, M != N, stride 2, bias
    (4, 4, 2, 1, False, 3),
    (6, 6, 3, 2, True, 3),
    (4, 4, 4, 1, False, 3),  # P = M: one KxK kernel per filter
    (4, 8, 4, 2, True, 3),  # P = M, M != N
    (8, 4, 2, 1, True, 3),  # M > N
    (6, 9, 3, 2, False, 5),  # K = 5
]
CASE_IDS = [f"M{m}-N{n}-P{p}-s{s}-{'bias' if b else 'nobias'}-K{k}" for m, n, p, s, b, k in CASES]


# ---------------------------------------------------------------------------
# the references themselves
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("m,n,p", [(4, 4, 1), (6, 9, 3), (4, 4, 4), (8, 4, 2)])
def test_strided_layout_counts(m, n, p):
    kxk = strided_kxk(n, m, p)
    assert (kxk.sum(1) == m // p).all()  # every filter: M/P KxK kernels, the rest 1x1
    if n % p == 0:
        assert (kxk.sum(0) == n // p).all()


@pytest.mark.parametrize("m,n,p,stride,bias,k", CASES, ids=CASE_IDS)
def test_reference_loop_equals_reference_dense(m, n, p, stride, bias, k):
    torch.manual_seed(0)
    big, small, b = random_strided_params(n, m, k, bias, seed=1)
    x = torch.randn(2, m, 7, 7, dtype=DTYPE)
    torch.testing.assert_close(
        reference_loop(x, big, small, p, stride, b),
        reference_dense(x, big, small, p, stride, b),
        atol=1e-10,
        rtol=0,
    )


def test_block_position_is_a_permutation_and_groups_by_residue():
    for n, p in [(4, 1), (6, 3), (8, 2), (4, 4), (12, 4)]:
        pos = block_position(n, p)
        assert sorted(pos.tolist()) == list(range(n))
        # channels with the same residue mod P land in the same block
        assert torch.equal(pos // (n // p), torch.arange(n) % p)


# ---------------------------------------------------------------------------
# block form == strided reference, forward and backward
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["split", "dense"])
@pytest.mark.parametrize("m,n,p,stride,bias,k", CASES, ids=CASE_IDS)
def test_block_form_equals_strided_reference(m, n, p, stride, bias, k, form):
    """Both training forms (grouped + masked 1x1, and one dense conv) are exact."""
    torch.manual_seed(0)
    layer = HetConv2d(m, n, part=p, kernel_size=k, stride=stride, bias=bias, training_form=form).to(DTYPE)
    assert (layer.mask is None) == (p == 1)
    big, small, b = random_strided_params(n, m, k, bias, seed=2)
    load_strided_into_block(layer, big, small, b)
    pos_in = block_position(m, p)
    pos_out = block_position(n, p)

    x = torch.randn(2, m, 7, 7, dtype=DTYPE)
    upstream = None

    def run_reference(fn):
        nonlocal upstream
        xr = x.clone().requires_grad_()
        bigr, smallr = big.clone().requires_grad_(), small.clone().requires_grad_()
        br = b.clone().requires_grad_() if b is not None else None
        y = fn(xr, bigr, smallr, p, stride, br)
        if upstream is None:
            upstream = torch.randn_like(y)
        (y * upstream).sum().backward()
        # a leaf the reference never used (all-KxK when P = 1) has zero gradient
        gsmall = smallr.grad if smallr.grad is not None else torch.zeros_like(smallr)
        return y.detach(), xr.grad, bigr.grad, gsmall, (br.grad if br is not None else None)

    y_loop, gx_loop, gbig_loop, gsmall_loop, gb_loop = run_reference(reference_loop)
    y_dense, gx_dense, gbig_dense, gsmall_dense, gb_dense = run_reference(reference_dense)
    for a, c in [(y_loop, y_dense), (gx_loop, gx_dense), (gbig_loop, gbig_dense), (gsmall_loop, gsmall_dense)]:
        torch.testing.assert_close(a, c, atol=1e-10, rtol=0)

    # block layer: x_block[:, pos_in[j]] = x[:, j]; its output y_block[:, pos_out[i]] is filter i
    x_block = torch.empty_like(x)
    x_block[:, pos_in] = x
    x_block.requires_grad_()
    y_block = layer(x_block)
    assert y_block.shape == y_loop.shape
    torch.testing.assert_close(y_block[:, pos_out], y_loop, atol=1e-10, rtol=0)
    (y_block[:, pos_out] * upstream).sum().backward()

    # input gradient
    torch.testing.assert_close(x_block.grad[:, pos_in], gx_loop, atol=1e-10, rtol=0)
    # weight gradients, mapped through the same permutation
    kxk = strided_kxk(n, m, p)
    grad_grouped, grad_pointwise = layer.parts(layer.weight.grad)
    for i in range(n):
        for j in range(m):
            if kxk[i, j]:
                torch.testing.assert_close(grad_grouped[pos_out[i], j // p], gbig_loop[i, j], atol=1e-10, rtol=0)
            else:
                torch.testing.assert_close(
                    grad_pointwise[pos_out[i], pos_in[j], 0, 0], gsmall_loop[i, j], atol=1e-10, rtol=0
                )
    if bias:
        torch.testing.assert_close(layer.bias.grad[pos_out], gb_loop, atol=1e-10, rtol=0)
    if layer.mask is not None:
        # the entries that are no parameters get exactly zero gradient
        assert (layer.weight.grad[~layer.mask] == 0).all()


def test_block_form_without_permutation_differs_from_strided():
    """Sanity: the permutation in the test above is not a no-op."""
    torch.manual_seed(0)
    m = n = 4
    p = 2
    layer = HetConv2d(m, n, part=p).to(DTYPE)
    big, small, _ = random_strided_params(n, m, 3, False, seed=3)
    load_strided_into_block(layer, big, small)
    x = torch.randn(1, m, 5, 5, dtype=DTYPE)
    assert not torch.allclose(layer(x), reference_loop(x, big, small, p, 1))


# ---------------------------------------------------------------------------
# the masks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("m,n,p", [(4, 4, 2), (6, 9, 3), (8, 4, 4), (4, 4, 4)])
def test_block_mask_layout(m, n, p):
    mask = hetconv_block_mask(n, m, p)
    assert mask.shape == (n, m)
    assert int((mask == 0).sum()) == p * (n // p) * (m // p)
    for g in range(p):
        block = mask[g * n // p : (g + 1) * n // p, g * m // p : (g + 1) * m // p]
        assert (block == 0).all()
    # every filter has exactly M - M/P 1x1 connections
    assert (mask.sum(1) == m - m // p).all()


@pytest.mark.parametrize("m,n,p,k", [(4, 4, 2, 3), (6, 9, 3, 5), (8, 4, 4, 3), (8, 4, 2, 1)])
def test_weight_mask_is_the_kxk_blocks_and_the_other_centre_taps(m, n, p, k):
    mask = hetconv_weight_mask(n, m, p, k)
    assert mask.shape == (n, m, k, k) and mask.dtype == torch.bool
    c = k // 2
    diagonal = hetconv_block_mask(n, m, p) == 0
    assert torch.equal(mask, diagonal[:, :, None, None].expand(n, m, k, k) | centre_tap(n, m, k))
    # every filter: M/P KxK kernels and M - M/P 1x1 kernels
    assert (mask.sum((1, 2, 3)) == m // p * k * k + m - m // p).all()
    assert mask[:, :, c, c].all()


def centre_tap(n: int, m: int, k: int) -> torch.Tensor:
    tap = torch.zeros(n, m, k, k, dtype=torch.bool)
    tap[:, :, k // 2, k // 2] = True
    return tap


def test_init_zeroes_the_entries_that_are_no_parameters_and_p1_has_no_mask():
    torch.manual_seed(0)
    layer = HetConv2d(8, 8, part=4)
    assert layer.weight.shape == (8, 8, 3, 3)
    assert (layer.weight[~layer.mask] == 0).all() and (layer.weight[layer.mask] != 0).all()
    assert layer.parts()[0].shape == (8, 2, 3, 3)
    assert [name for name, _ in layer.named_parameters()] == ["weight"]
    assert list(layer.state_dict()) == ["weight"]  # the masks follow from the shape
    plain = HetConv2d(8, 8, part=1, bias=True)
    assert plain.mask is None and plain.pointwise_mask is None
    assert plain.parts() == (plain.weight, None)
    assert list(plain.state_dict()) == ["weight", "bias"]


@pytest.mark.parametrize("form", ["split", "dense"])
@pytest.mark.parametrize("stride", [1, 2])
def test_masked_entries_have_no_effect_and_zero_grad(stride, form):
    torch.manual_seed(0)
    layer = HetConv2d(8, 12, part=4, stride=stride, bias=True, training_form=form).to(DTYPE)
    x = torch.randn(2, 8, 6, 6, dtype=DTYPE)
    y0 = layer(x).detach()
    masked = ~layer.mask
    with torch.no_grad():
        layer.weight[masked] = torch.randn(int(masked.sum()), dtype=DTYPE) * 1e3
    y1 = layer(x)
    assert torch.equal(y0, y1)
    assert (layer.dense_weight()[masked] == 0).all() and (layer.parts()[1][~layer.pointwise_mask] == 0).all()
    y1.pow(2).sum().backward()
    grad = layer.weight.grad
    assert (grad[masked] == 0).all()
    assert (grad[~masked] != 0).all()


# ---------------------------------------------------------------------------
# training: masked entries never matter, under any optimizer / weight decay / clipping
# ---------------------------------------------------------------------------


def dense_equivalent_weight(layer: HetConv2d) -> torch.Tensor:
    """Block-layout dense KxK weight built by hand from the two parts of the layer's weight."""
    n, m, p, k = layer.out_channels, layer.in_channels, layer.part, layer.kernel_size
    grouped, pointwise = layer.parts()
    weight = torch.zeros(n, m, k, k, dtype=layer.weight.dtype)
    for g in range(p):
        rows = slice(g * n // p, (g + 1) * n // p)
        cols = slice(g * m // p, (g + 1) * m // p)
        weight[rows, cols] = grouped[rows]
    weight[:, :, k // 2, k // 2] += pointwise[:, :, 0, 0]
    return weight


OPTIMIZERS = {
    "sgd-momentum-wd-clip": lambda params: torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=5e-2),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.5),
}


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_training_never_touches_masked_entries(opt_name):
    torch.manual_seed(0)
    m, n, p, stride = 8, 8, 4, 1
    layer = HetConv2d(m, n, part=p, stride=stride, bias=True).to(DTYPE)
    # A twin whose masked raw entries are garbage: it must train identically.
    twin = copy.deepcopy(layer)
    masked = ~layer.mask
    with torch.no_grad():
        twin.weight[masked] = torch.randn(int(masked.sum()), dtype=DTYPE) * 10
    teacher = torch.nn.Conv2d(m, n, 3, stride, 1).to(DTYPE)
    x = torch.randn(16, m, 5, 5, dtype=DTYPE)
    with torch.no_grad():
        target = teacher(x)

    opt = OPTIMIZERS[opt_name](layer.parameters())
    opt_twin = OPTIMIZERS[opt_name](twin.parameters())
    losses = []
    for _ in range(50):
        for model, optimizer in [(layer, opt), (twin, opt_twin)]:
            optimizer.zero_grad()
            loss = F.mse_loss(model(x), target)
            loss.backward()
            if opt_name.endswith("clip"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
            optimizer.step()
            if model is layer:
                losses.append(loss.item())
        assert (layer.weight[masked] == 0).all()  # zero, zero gradient, so zero decay
        assert torch.equal(layer.dense_weight(), twin.dense_weight())
        assert torch.equal(layer.weight[~masked], twin.weight[~masked])
        assert torch.equal(layer.bias, twin.bias)

    assert losses[-1] < 0.5 * losses[0]
    # The twin's raw masked entries were decayed (weight decay touches them) - irrelevant.
    assert not torch.equal(twin.weight[masked], layer.weight[masked])
    with torch.no_grad():
        y = layer(x)
        assert torch.equal(y, twin(x))
        # an independent computation using only the effective weights
        fresh = F.conv2d(x, dense_equivalent_weight(layer), layer.bias, stride, layer.padding)
        torch.testing.assert_close(y, fresh, atol=1e-10, rtol=0)
        # and a copy whose masked raw entries are set to anything
        other = copy.deepcopy(layer)
        other.weight[masked] = 123.0
        assert torch.equal(other(x), y)


# ---------------------------------------------------------------------------
# the layer as it was with two weights: same start, same training
# ---------------------------------------------------------------------------


class TwoWeightHetConv(nn.Module):
    """HetConv as this project had it before one weight: a grouped KxK ``nn.Conv2d`` (with the
    bias) plus a 1x1 ``nn.Conv2d`` whose weight is masked in the forward pass (zeroed on the
    block diagonal at construction), built in that order."""

    def __init__(self, m, n, p, k=3, stride=1, bias=False):
        super().__init__()
        self.stride = stride
        self.gwc = nn.Conv2d(m, n, k, stride, k // 2, groups=p, bias=bias)
        self.pwc = nn.Conv2d(m, n, 1, stride, 0, bias=False) if p > 1 else None
        if self.pwc is not None:
            self.register_buffer("mask", hetconv_block_mask(n, m, p)[:, :, None, None])
            with torch.no_grad():
                self.pwc.weight.mul_(self.mask)

    def pointwise_weight(self):
        return self.pwc.weight * self.mask

    def forward(self, x):
        y = self.gwc(x)
        return y if self.pwc is None else y + F.conv2d(x, self.pointwise_weight(), None, self.stride)


def effective(layer):
    """The parameters that matter, in the two-weight layout: grouped KxK, masked 1x1, bias."""
    if isinstance(layer, TwoWeightHetConv):
        pointwise = None if layer.pwc is None else layer.pointwise_weight()
        return layer.gwc.weight, pointwise, layer.gwc.bias
    grouped, pointwise = layer.parts()
    return grouped, pointwise, layer.bias


def effective_grads(layer):
    if isinstance(layer, TwoWeightHetConv):
        pointwise = None if layer.pwc is None else layer.pwc.weight.grad * layer.mask
        return layer.gwc.weight.grad, pointwise, None if layer.gwc.bias is None else layer.gwc.bias.grad
    grouped, pointwise = layer.parts(layer.weight.grad)
    return grouped, pointwise, None if layer.bias is None else layer.bias.grad


def assert_all_close(got, expected, **tolerance):
    for a, b in zip(got, expected, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **tolerance)


@pytest.mark.parametrize("m,n,p,stride,bias,k", CASES, ids=CASE_IDS)
def test_same_initialisation_as_two_weights(m, n, p, stride, bias, k):
    """From the same seed the one weight holds exactly the two weights' initial values (and
    draws the same random numbers: what comes next is the same too)."""
    torch.manual_seed(5)
    old = TwoWeightHetConv(m, n, p, k, stride, bias)
    after_old = torch.rand(3)
    torch.manual_seed(5)
    new = HetConv2d(m, n, p, k, stride, bias=bias)
    assert torch.equal(torch.rand(3), after_old)
    assert_all_close(effective(new), effective(old), atol=0, rtol=0)
    if new.mask is not None:
        assert (new.weight[~new.mask] == 0).all()


@pytest.mark.parametrize("form", ["split", "dense"])
@pytest.mark.parametrize("m,n,p,stride,bias,k", CASES, ids=CASE_IDS)
def test_training_equals_two_weights(m, n, p, stride, bias, k, form):
    """SGD with Nesterov momentum, weight decay and gradient clipping, as the recipe trains:
    the one weight follows the two weights step for step (forward, gradients of the
    parameters that matter, parameters), up to float rounding."""
    torch.manual_seed(7)
    old = TwoWeightHetConv(m, n, p, k, stride, bias).to(DTYPE)
    torch.manual_seed(7)
    new = HetConv2d(m, n, p, k, stride, bias=bias, training_form=form).to(DTYPE)
    optimizers = [
        torch.optim.SGD(layer.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-2)
        for layer in (old, new)
    ]
    tolerance = dict(atol=1e-12, rtol=1e-10)
    for step in range(4):
        x = torch.randn(3, m, 7, 7, dtype=DTYPE)
        upstream = None
        outputs, inputs = [], []
        for layer, optimizer in zip((old, new), optimizers):
            optimizer.zero_grad()
            xi = x.clone().requires_grad_()
            y = layer(xi)
            upstream = torch.randn_like(y) if upstream is None else upstream
            ((y * upstream).sum() + y.square().mean()).backward()
            torch.nn.utils.clip_grad_norm_(layer.parameters(), max_norm=0.5 + step)
            outputs.append(y.detach())
            inputs.append(xi.grad)
        torch.testing.assert_close(outputs[1], outputs[0], **tolerance)
        torch.testing.assert_close(inputs[1], inputs[0], **tolerance)
        assert_all_close(effective_grads(new), effective_grads(old), **tolerance)
        for optimizer in optimizers:
            optimizer.step()
        with torch.no_grad():
            assert_all_close(effective(new), effective(old), **tolerance)
            if new.mask is not None:
                assert (new.weight[~new.mask] == 0).all()


def two_weight_state(layer: HetConv2d) -> dict:
    """``layer``'s parameters as a state dict of the two-weight layout (its key names)."""
    shape = (layer.in_channels, layer.out_channels, layer.part, layer.kernel_size, layer.stride)
    old = TwoWeightHetConv(*shape).to(layer.weight.dtype)
    old.gwc.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
    grouped, pointwise = layer.parts()
    with torch.no_grad():
        old.gwc.weight.copy_(grouped)
        if pointwise is not None:
            old.pwc.weight.copy_(pointwise)
    return old.state_dict()


@pytest.mark.parametrize("p,bias", [(4, True), (1, True), (2, False)])
def test_state_dict_of_two_weights_is_converted(p, bias):
    torch.manual_seed(0)
    trained = HetConv2d(8, 12, p, bias=bias).to(DTYPE)
    with torch.no_grad():
        trained.weight.add_(torch.randn_like(trained.weight))  # the masked entries too: ignored
    state = two_weight_state(trained)
    assert "gwc.weight" in state and ("pwc.weight" in state) == (p > 1) and ("mask" in state) == (p > 1)
    model = nn.Sequential(nn.Identity(), HetConv2d(8, 12, p, bias=bias).to(DTYPE))
    prefixed = {f"1.{key}": value for key, value in state.items()}
    converted = upgrade_hetconv_state(model, prefixed)
    assert converted.keys() == model.state_dict().keys() and "1.gwc.weight" in prefixed  # a copy
    model.load_state_dict(prefixed)  # load_state_dict converts by itself
    torch.testing.assert_close(model[1].dense_weight(), trained.dense_weight(), atol=0, rtol=0)
    assert torch.equal(model.state_dict()["1.weight"], converted["1.weight"])
    # entries of another shape are left for the caller to report
    other = nn.Sequential(nn.Identity(), HetConv2d(8, 24, p, bias=bias))
    assert upgrade_hetconv_state(other, prefixed).keys() == prefixed.keys()
    with pytest.raises(RuntimeError):
        other.load_state_dict(prefixed)


# ---------------------------------------------------------------------------
# factory, errors, autocast
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [1, 2])
def test_create_conv2d_builds_hetconv(stride):
    torch.manual_seed(0)
    layer = create_conv2d(8, 12, 3, stride, layer_type="hetconv", part=4, bias=True)
    assert isinstance(layer, HetConv2d)
    assert (layer.in_channels, layer.out_channels, layer.part) == (8, 12, 4)
    assert (layer.kernel_size, layer.stride, layer.padding) == (3, stride, 1)
    assert layer.bias is not None
    y = layer(torch.randn(2, 8, 8, 8))
    assert y.shape == (2, 12, 8 // stride, 8 // stride)


@pytest.mark.parametrize("m,n,part", [(8, 8, 3), (6, 8, 3), (8, 6, 4), (8, 8, 0), (8, 8, -2), (4, 4, 8)])
def test_illegal_part_raises(m, n, part):
    with pytest.raises(ValueError):
        create_conv2d(m, n, 3, layer_type="hetconv", part=part)
    with pytest.raises(ValueError):
        HetConv2d(m, n, part=part)


@pytest.mark.parametrize("form", ["split", "dense"])
@pytest.mark.parametrize("part", [1, 2, 8])
def test_autocast_bfloat16_cpu(part, form):
    torch.manual_seed(0)
    layer = HetConv2d(8, 16, part=part, stride=2, training_form=form)
    x = torch.randn(2, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.shape == (2, 16, 4, 4)
    assert torch.isfinite(y).all()
    y.float().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.float32
    if layer.mask is not None:
        assert (layer.weight.grad[~layer.mask] == 0).all()
    # close to the float32 result
    torch.testing.assert_close(y.float(), layer(x).detach(), atol=0.1, rtol=0.05)


def test_split_form_trains_after_a_first_call_in_inference_mode():
    """The split form's index tensors are cached per shape (one no other test uses, so that
    this first call makes them): never as inference tensors."""
    layer = HetConv2d(18, 6, part=3, training_form="split")
    with torch.inference_mode():
        layer.eval()(torch.randn(1, 18, 4, 4))
    layer.train()(torch.randn(1, 18, 4, 4)).sum().backward()
    assert layer.weight.grad is not None and (layer.weight.grad[layer.mask] != 0).any()


def test_training_forms_auto_and_errors():
    layer = HetConv2d(8, 8, part=4)
    assert layer.training_form == "auto" and layer._form_for(torch.zeros(1, 8, 4, 4)) == "split"  # CPU
    with pytest.raises(ValueError):
        HetConv2d(8, 8, part=4, training_form="fast")
    # the dense weight: the grouped kernels on their diagonal blocks, the 1x1 kernels at the centre
    layer = HetConv2d(8, 4, part=2, kernel_size=3).to(DTYPE)
    weight = layer.dense_weight()
    grouped, pointwise = layer.parts()
    assert weight.shape == (4, 8, 3, 3) and grouped.shape == (4, 4, 3, 3) and pointwise.shape == (4, 8, 1, 1)
    torch.testing.assert_close(weight[:2, :4], grouped[:2], atol=0, rtol=0)
    torch.testing.assert_close(weight[2:, 4:], grouped[2:], atol=0, rtol=0)
    torch.testing.assert_close(weight[:2, 4:], F.pad(pointwise[:2, 4:], (1, 1, 1, 1)), atol=0, rtol=0)
    assert (pointwise[:2, :4] == 0).all() and (pointwise[2:, 4:] == 0).all()
    torch.testing.assert_close(dense_equivalent_weight(layer), weight, atol=0, rtol=0)
    # load_parts is the inverse of parts (the 1x1 block diagonal is not read)
    other = HetConv2d(8, 4, part=2, kernel_size=3).to(DTYPE)
    other.load_parts(grouped, pointwise + (~layer.pointwise_mask).to(DTYPE))  # 1 on the block diagonal
    assert torch.equal(other.weight[other.mask], layer.weight[layer.mask])
    assert (other.weight[~other.mask] == 0).all()
