"""HetConv: heterogeneous kernel-based convolution.

Singh et al., "HetConv: Heterogeneous Kernel-Based Convolutions for Deep CNNs", CVPR 2019
(arXiv 1903.04120). Each of the N filters has KxK kernels on M/P of its M input channels and
1x1 kernels on the rest, which costs ``1/P + (1 - 1/P)/K^2`` of a standard convolution.

Efficient (block) form used here: a grouped KxK convolution with ``groups=P`` (filter block g
sees channel block g) plus a dense 1x1 convolution whose block diagonal (filter block g x
channel block g) is zero. It equals the paper's strided layout (filter i has its KxK kernels
on channels j with ``(j - i) mod P == 0``) up to a permutation of inputs and outputs.

The zero block is enforced in the forward pass (``pwc.weight * mask``), not by zeroing
gradients after ``backward()`` as the reference code does: forward masking is exact under
any optimizer, weight decay, AMP and gradient clipping.

Two exact training forms compute the same function from the same parameters: ``split``
(the grouped KxK conv plus the masked 1x1 conv, FLOPs-proportional) and ``dense`` (one
standard KxK conv whose weight is the KxK kernels placed on their diagonal blocks plus the
1x1 kernels at the kernel centre, built by one autograd node of two kernels forward and three
backward). At CIFAR shapes a GPU runs one dense conv faster than a grouped conv plus a 1x1
conv, although it does more FLOPs, and it is launch-bound: the dense form launches fewer
kernels. ``auto`` picks per layer shape and device.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .timing import median_ms

__all__ = ["TRAINING_FORMS", "HetConv2d", "clear_form_cache", "hetconv_block_mask"]

TRAINING_FORMS = ("auto", "split", "dense")

# On CPU the split form's FLOPs saving wins at every shape measured (2 cores, VGG-16 and
# MobileNetV2 layers at width 0.25 to 1, P 2 to 16), so ``auto`` takes it without timing.
_CPU_FORM = "split"
# (device, dtype, input shape and layout, layer shape) -> the faster form, timed once.
_FORM_CACHE: dict[tuple, str] = {}


def clear_form_cache() -> None:
    """Forget the timed ``auto`` choices (for benchmarks that time both from scratch)."""
    _FORM_CACHE.clear()


def hetconv_block_mask(out_channels: int, in_channels: int, part: int) -> torch.Tensor:
    """1 where the 1x1 branch may connect filter ``o`` to channel ``i``, 0 on the block diagonal."""
    filter_block = torch.arange(out_channels) // (out_channels // part)
    channel_block = torch.arange(in_channels) // (in_channels // part)
    return (filter_block[:, None] != channel_block[None, :]).float()


class HetConv2d(nn.Module):
    """Heterogeneous-kernel convolution in its efficient block form.

    Args:
        in_channels: M, must be divisible by ``part``.
        out_channels: N, must be divisible by ``part``.
        part: P. ``P = 1`` is a plain KxK convolution (no 1x1 branch); ``P = M`` leaves one
            KxK kernel per filter.
        kernel_size, stride, padding, bias: as in :class:`torch.nn.Conv2d`
            (padding defaults to "same" for odd kernels).
        training_form: ``split``, ``dense`` or ``auto`` (default): how forward computes (the
            result is the same up to float rounding). ``auto`` is ``split`` on CPU and, on a
            GPU, whichever form trains faster at this input shape, timed once per shape,
            device and dtype in the first call (a few milliseconds) and remembered.

    Example:
        >>> layer = HetConv2d(64, 128, part=4)
        >>> layer(torch.randn(2, 64, 16, 16)).shape
        torch.Size([2, 128, 16, 16])
    """

    mask: torch.Tensor | None  # buffer, registered in __init__ (None for P = 1)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        part: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = False,
        training_form: str = "auto",
    ) -> None:
        super().__init__()
        if training_form not in TRAINING_FORMS:
            raise ValueError(f"unknown HetConv training form {training_form!r}; use {', '.join(TRAINING_FORMS)}")
        self.training_form = training_form
        if part < 1 or in_channels % part or out_channels % part:
            raise ValueError(
                f"HetConv part {part} must divide in_channels {in_channels} and out_channels {out_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.part = part
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.gwc = nn.Conv2d(in_channels, out_channels, kernel_size, stride, self.padding, groups=part, bias=bias)
        if part > 1:
            self.pwc: nn.Conv2d | None = nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False)
            mask = hetconv_block_mask(out_channels, in_channels, part)[:, :, None, None]
            self.register_buffer("mask", mask)
            with torch.no_grad():
                self.pwc.weight.mul_(mask)
        else:
            self.pwc = None
            self.register_buffer("mask", None)

    def pointwise_weight(self) -> torch.Tensor:
        """The 1x1 weight as the forward pass uses it (block diagonal exactly zero)."""
        assert self.pwc is not None and self.mask is not None  # P > 1
        return self.pwc.weight * self.mask

    def dense_weight(self) -> torch.Tensor:
        """(N, M, K, K): the grouped kernels on their diagonal blocks plus the masked 1x1
        kernels at the centre tap, differentiable; one autograd node (:class:`_DenseWeight`)."""
        assert self.pwc is not None and self.mask is not None  # P > 1
        n, m, k, p = self.out_channels, self.in_channels, self.kernel_size, self.part
        blocks, centre = _dense_indices(n, m, p, k, self.gwc.weight.device)
        return _DenseWeight.apply(self.gwc.weight, self.pwc.weight, blocks, centre, self.mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pwc is None:
            return self.gwc(x)
        if self._form_for(x) == "dense":
            return F.conv2d(x, self.dense_weight(), self.gwc.bias, self.stride, self.padding)
        return self.gwc(x) + F.conv2d(x, self.pointwise_weight(), None, self.stride)

    def _form_for(self, x: torch.Tensor) -> str:
        if self.training_form != "auto":
            return self.training_form
        if x.device.type != "cuda":
            return _CPU_FORM  # meta and other devices: no timing possible or wanted
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        key = (
            x.device,
            x.dtype,
            torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None,
            tuple(x.shape),
            channels_last,
            self.in_channels,
            self.out_channels,
            self.part,
            self.kernel_size,
            self.stride,
            self.training,
        )
        if key not in _FORM_CACHE:
            _FORM_CACHE[key] = self._time_forms(x)
        return _FORM_CACHE[key]

    def _time_forms(self, x: torch.Tensor, repeats: int = 5) -> str:
        """The faster form at ``x``'s shape: forward (and backward in training), median of
        ``repeats`` after a warm-up, on copies so no gradient reaches the parameters. The
        one place this layer waits on the GPU, once per shape."""
        probe = HetConv2d(
            self.in_channels,
            self.out_channels,
            self.part,
            self.kernel_size,
            self.stride,
            self.padding,
            bias=self.gwc.bias is not None,
        ).to(x.device, self.gwc.weight.dtype)
        probe.train(self.training)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            probe.to(memory_format=torch.channels_last)  # the layout cuDNN will see
        sample = x.detach().clone().requires_grad_(self.training)

        def step() -> None:
            with torch.enable_grad() if self.training else torch.no_grad():
                out = probe(sample)
                if self.training:
                    out.float().square().mean().backward()

        timed = {}
        for form in ("split", "dense"):
            probe.training_form = form
            timed[form] = median_ms(step, x.device, warmup=2, repeats=repeats)
        return min(timed, key=timed.__getitem__)

    @torch.no_grad()
    def deploy(self, form: str = "split") -> nn.Module:
        """The inference form, with the mask baked into plain weights.

        ``split``: ``ConvSum(grouped KxK, 1x1)``, the FLOPs-proportional form; ``dense``: one
        standard KxK convolution holding both kernels (the 1x1 kernels at the centre tap),
        which can be faster where grouped convolutions run poorly. Both are exact.
        """
        from .deployed import ConvSum

        gwc = _copy_conv(self.gwc)
        if self.pwc is None:
            return gwc
        pwc = _copy_conv(self.pwc)
        pwc.weight.copy_(self.pointwise_weight())
        if form == "split":
            return ConvSum(gwc, pwc)
        if form != "dense":
            raise ValueError(f"unknown HetConv deploy form {form!r}; use split or dense")
        dense = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            bias=self.gwc.bias is not None,
        )
        dense = dense.to(self.gwc.weight.device, self.gwc.weight.dtype)
        weight = torch.zeros_like(dense.weight)
        per_group_in, per_group_out = self.in_channels // self.part, self.out_channels // self.part
        for g in range(self.part):
            rows, cols = (
                slice(g * per_group_out, (g + 1) * per_group_out),
                slice(g * per_group_in, (g + 1) * per_group_in),
            )
            weight[rows, cols] = self.gwc.weight[rows]
        centre = self.kernel_size // 2
        weight[:, :, centre, centre] += pwc.weight[:, :, 0, 0]
        dense.weight.copy_(weight)
        if self.gwc.bias is not None and dense.bias is not None:
            dense.bias.copy_(self.gwc.bias)
        return dense

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, part={self.part}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}"
            + ("" if self.training_form == "auto" else f", training_form={self.training_form}")
        )


class _DenseWeight(torch.autograd.Function):
    """HetConv's dense K x K weight from its grouped weight (N, M/P, K, K) and its 1 x 1 weight
    (N, M, 1, 1): two kernels forward (the 1 x 1 weight padded to the centre tap, the grouped
    kernels written over the diagonal blocks, so the masked 1 x 1 entries are never read),
    three backward (a gather per weight, the mask on the 1 x 1 gradient). Autograd of the same
    construction from views, products and sums takes about twice the calls."""

    @staticmethod
    def forward(
        ctx: Any,
        grouped: torch.Tensor,
        pointwise: torch.Tensor,
        blocks: torch.Tensor,
        centre: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(blocks, centre, mask)
        k = grouped.shape[-1]
        c = k // 2
        return F.pad(pointwise, (c, k - 1 - c, c, k - 1 - c)).put_(blocks, grouped)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        blocks, centre, mask = ctx.saved_tensors
        grad_grouped = grad.take(blocks) if ctx.needs_input_grad[0] else None
        grad_pointwise = grad.take(centre) * mask if ctx.needs_input_grad[1] else None
        return grad_grouped, grad_pointwise, None, None, None


@functools.lru_cache(maxsize=32)
def _dense_indices(n: int, m: int, part: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat positions in the dense (N, M, K, K) weight of every grouped weight entry, shaped
    like the grouped weight (N, M/P, K, K), and of every 1 x 1 entry (its centre tap), shaped
    (N, M, 1, 1); shared by the layers of one shape (and never inference tensors, which a
    training step could not save for its backward, whatever mode the first caller ran in)."""
    with torch.inference_mode(False):
        position = torch.arange(n * m * k * k).view(n, m, k, k)
        block_of_filter = torch.arange(n) // (n // part)
        channels = block_of_filter[:, None] * (m // part) + torch.arange(m // part)  # (N, M/P)
        blocks = position[torch.arange(n)[:, None], channels]  # (N, M/P, K, K)
        centre = position[:, :, k // 2, k // 2].reshape(n, m, 1, 1)
        return blocks.to(device), centre.contiguous().to(device)


def _copy_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` with the same configuration and weights."""
    copy = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        _pair(conv.kernel_size),
        _pair(conv.stride),
        conv.padding if isinstance(conv.padding, str) else _pair(conv.padding),
        _pair(conv.dilation),
        conv.groups,
        bias=conv.bias is not None,
    )
    copy = copy.to(conv.weight.device, conv.weight.dtype)
    copy.load_state_dict(conv.state_dict())
    return copy


def _pair(value: tuple[int, ...]) -> tuple[int, int]:
    """A 2-d convolution's size (held as a tuple) as the pair its constructor takes."""
    return (value[0], value[1])
