"""Tests for layers.hetconv against slow, obviously-correct references of the paper's layout.

HetConv (Singh et al., CVPR 2019), strided layout: filter i has a KxK kernel on input channel j
when ``(j - i) mod P == 0`` and a 1x1 kernel otherwise. ``HetConv2d`` implements the block
layout (grouped KxK conv + masked dense 1x1 conv); the two are equal up to a permutation of
input channels and filters, which these tests work out explicitly.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from layers import HetConv2d, create_conv2d, hetconv_block_mask

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
    """Copy strided-layout weights into ``layer`` (block layout) through the permutation."""
    n_filters, n_channels, _, _ = big.shape
    part = layer.part
    pos_in = block_position(n_channels, part)
    pos_out = block_position(n_filters, part)
    kxk = strided_kxk(n_filters, n_channels, part)
    with torch.no_grad():
        layer.gwc.weight.zero_()
        if layer.pwc is not None:
            layer.pwc.weight.zero_()
        for i in range(n_filters):
            for j in range(n_channels):
                if kxk[i, j]:
                    # Filter block i % P sees channel block j % P == i % P; j // P is the
                    # channel's index inside its block.
                    layer.gwc.weight[pos_out[i], j // part] = big[i, j]
                else:
                    layer.pwc.weight[pos_out[i], pos_in[j], 0, 0] = small[i, j]
        if bias is not None:
            layer.gwc.bias[pos_out] = bias


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
    assert (layer.pwc is None) == (p == 1)
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
    for i in range(n):
        for j in range(m):
            if kxk[i, j]:
                torch.testing.assert_close(
                    layer.gwc.weight.grad[pos_out[i], j // p], gbig_loop[i, j], atol=1e-10, rtol=0
                )
            else:
                torch.testing.assert_close(
                    layer.pwc.weight.grad[pos_out[i], pos_in[j], 0, 0], gsmall_loop[i, j], atol=1e-10, rtol=0
                )
    if bias:
        torch.testing.assert_close(layer.gwc.bias.grad[pos_out], gb_loop, atol=1e-10, rtol=0)
    if layer.pwc is not None:
        assert layer.pwc.bias is None
        # the masked block diagonal gets exactly zero gradient
        assert (layer.pwc.weight.grad[layer.mask.expand_as(layer.pwc.weight) == 0] == 0).all()


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
# the mask
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


def test_init_zeroes_masked_weights_and_p1_has_no_pointwise_branch():
    torch.manual_seed(0)
    layer = HetConv2d(8, 8, part=4)
    assert (layer.pwc.weight[layer.mask.expand_as(layer.pwc.weight) == 0] == 0).all()
    assert layer.gwc.groups == 4
    plain = HetConv2d(8, 8, part=1)
    assert plain.pwc is None and plain.mask is None
    assert plain.gwc.groups == 1


@pytest.mark.parametrize("form", ["split", "dense"])
@pytest.mark.parametrize("stride", [1, 2])
def test_masked_pointwise_weights_have_no_effect_and_zero_grad(stride, form):
    torch.manual_seed(0)
    layer = HetConv2d(8, 12, part=4, stride=stride, bias=True, training_form=form).to(DTYPE)
    x = torch.randn(2, 8, 6, 6, dtype=DTYPE)
    y0 = layer(x).detach()
    masked = layer.mask.expand_as(layer.pwc.weight) == 0
    with torch.no_grad():
        layer.pwc.weight[masked] = torch.randn(int(masked.sum()), dtype=DTYPE) * 1e3
    y1 = layer(x)
    assert torch.equal(y0, y1)
    assert (layer.pointwise_weight()[masked] == 0).all()
    y1.pow(2).sum().backward()
    grad = layer.pwc.weight.grad
    assert (grad[masked] == 0).all()
    assert (grad[~masked] != 0).all()


# ---------------------------------------------------------------------------
# training: masked entries never matter, under any optimizer / weight decay / clipping
# ---------------------------------------------------------------------------


def dense_equivalent_weight(layer: HetConv2d) -> torch.Tensor:
    """Block-layout dense KxK weight built from gwc and the *effective* 1x1 weight only."""
    n, m, p, k = layer.out_channels, layer.in_channels, layer.part, layer.kernel_size
    weight = torch.zeros(n, m, k, k, dtype=layer.gwc.weight.dtype)
    for g in range(p):
        rows = slice(g * n // p, (g + 1) * n // p)
        cols = slice(g * m // p, (g + 1) * m // p)
        weight[rows, cols] = layer.gwc.weight[rows]
    weight[:, :, k // 2, k // 2] += layer.pointwise_weight()[:, :, 0, 0]
    return weight


OPTIMIZERS = {
    "sgd-momentum-wd-clip": lambda params: torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=5e-2),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.5),
}


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_training_never_touches_masked_block(opt_name):
    torch.manual_seed(0)
    m, n, p, stride = 8, 8, 4, 1
    layer = HetConv2d(m, n, part=p, stride=stride, bias=True).to(DTYPE)
    # A twin whose masked raw entries are garbage: it must train identically.
    twin = copy.deepcopy(layer)
    masked = layer.mask.expand_as(layer.pwc.weight) == 0
    with torch.no_grad():
        twin.pwc.weight[masked] = torch.randn(int(masked.sum()), dtype=DTYPE) * 10
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
        assert (layer.pointwise_weight()[masked] == 0).all()
        assert (twin.pointwise_weight()[masked] == 0).all()
        assert torch.equal(layer.pointwise_weight(), twin.pointwise_weight())
        assert torch.equal(layer.gwc.weight, twin.gwc.weight)
        assert torch.equal(layer.gwc.bias, twin.gwc.bias)

    assert losses[-1] < 0.5 * losses[0]
    # The twin's raw masked entries were decayed (weight decay touches them) - irrelevant.
    assert not torch.equal(twin.pwc.weight[masked], layer.pwc.weight[masked])
    with torch.no_grad():
        y = layer(x)
        assert torch.equal(y, twin(x))
        # an independent computation using only the effective weights
        fresh = F.conv2d(x, dense_equivalent_weight(layer), layer.gwc.bias, stride, layer.padding)
        torch.testing.assert_close(y, fresh, atol=1e-10, rtol=0)
        # and a copy whose masked raw entries are set to anything
        other = copy.deepcopy(layer)
        other.pwc.weight[masked] = 123.0
        assert torch.equal(other(x), y)


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
    assert layer.gwc.bias is not None
    y = layer(torch.randn(2, 8, 8, 8))
    assert y.shape == (2, 12, 8 // stride, 8 // stride)


@pytest.mark.parametrize("m,n,part", [(8, 8, 3), (6, 8, 3), (8, 6, 4), (8, 8, 0), (8, 8, -2), (4, 4, 8)])
def test_illegal_part_raises(m, n, part):
    with pytest.raises(ValueError):
        create_conv2d(m, n, 3, layer_type="hetconv", part=part)
    with pytest.raises(ValueError):
        HetConv2d(m, n, part=part)


@pytest.mark.parametrize("part", [1, 2, 8])
def test_autocast_bfloat16_cpu(part):
    torch.manual_seed(0)
    layer = HetConv2d(8, 16, part=part, stride=2)
    x = torch.randn(2, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.shape == (2, 16, 4, 4)
    assert torch.isfinite(y).all()
    y.float().sum().backward()
    assert layer.gwc.weight.grad is not None
    if layer.pwc is not None:
        masked = layer.mask.expand_as(layer.pwc.weight) == 0
        assert (layer.pwc.weight.grad[masked] == 0).all()
    # close to the float32 result
    torch.testing.assert_close(y.float(), layer(x).detach(), atol=0.1, rtol=0.05)


def test_dense_form_trains_after_a_first_call_in_inference_mode():
    """The dense form's index tensors are cached per shape (one no other test uses, so that
    this first call makes them): never as inference tensors."""
    layer = HetConv2d(18, 6, part=3, training_form="dense")
    with torch.inference_mode():
        layer.eval()(torch.randn(1, 18, 4, 4))
    layer.train()(torch.randn(1, 18, 4, 4)).sum().backward()
    assert layer.gwc.weight.grad is not None and layer.pwc.weight.grad is not None


def test_training_forms_auto_and_errors():
    layer = HetConv2d(8, 8, part=4)
    assert layer.training_form == "auto" and layer._form_for(torch.zeros(1, 8, 4, 4)) == "split"  # CPU
    with pytest.raises(ValueError):
        HetConv2d(8, 8, part=4, training_form="fast")
    # dense weight: the grouped kernels on their diagonal blocks, the 1x1 kernels at the centre
    layer = HetConv2d(8, 4, part=2, kernel_size=3).to(DTYPE)
    weight = layer.dense_weight()
    assert weight.shape == (4, 8, 3, 3)
    torch.testing.assert_close(
        weight[:2, :4], layer.gwc.weight[:2] + F.pad(layer.pointwise_weight()[:2, :4], (1, 1, 1, 1))
    )
    torch.testing.assert_close(weight[:2, 4:], F.pad(layer.pwc.weight[:2, 4:], (1, 1, 1, 1)))
    assert (weight[:2, 4:, 0] == 0).all() and (layer.pointwise_weight()[:2, :4] == 0).all()
