"""HetConv: heterogeneous kernel-based convolution.

Singh et al., "HetConv: Heterogeneous Kernel-Based Convolutions for Deep CNNs", CVPR 2019
(arXiv 1903.04120). Each of the N filters has KxK kernels on M/P of its M input channels and
1x1 kernels on the rest, which costs ``1/P + (1 - 1/P)/K^2`` of a standard convolution.

Block form used here: filter block g has its KxK kernels on channel block g and 1x1 kernels on
the other channel blocks. It equals the paper's strided layout (filter i has its KxK kernels
on channels j with ``(j - i) mod P == 0``) up to a permutation of inputs and outputs.

The layer has one trainable weight, a dense (N, M, K, K) tensor, and a fixed 0/1 mask (a
buffer): every tap where filter block g meets channel block g, only the centre tap elsewhere
(a 1x1 kernel is a KxK kernel that is zero but at its centre). The mask is applied in the
forward pass, not by zeroing gradients after ``backward()`` as the reference code does:
forward masking is exact under any optimizer, weight decay, AMP and gradient clipping, and
the masked entries start at zero and get zero gradients, so they stay zero.

Two exact training forms compute the same function from the same weight: ``dense``, one
standard KxK conv of ``weight * mask`` (one product forward, one backward beyond a dense
conv; at CIFAR shapes a GPU runs it faster than two convolutions, although it does more
FLOPs, and it is launch-bound), and ``split``, a grouped KxK conv over the diagonal blocks
plus a 1x1 conv over the masked centre taps, FLOPs-proportional (both read from the weight
by one autograd node). ``auto`` picks per layer shape and device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .timing import median_ms

__all__ = [
    "TRAINING_FORMS",
    "HetConv2d",
    "clear_form_cache",
    "hetconv_block_mask",
    "hetconv_weight_mask",
    "upgrade_hetconv_state",
]

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
    """(N, M): 1 where the 1x1 kernels connect filter ``o`` to channel ``i``, 0 on the block
    diagonal (where the KxK kernels are)."""
    filter_block = torch.arange(out_channels) // (out_channels // part)
    channel_block = torch.arange(in_channels) // (in_channels // part)
    return (filter_block[:, None] != channel_block[None, :]).float()


def hetconv_weight_mask(out_channels: int, in_channels: int, part: int, kernel_size: int) -> torch.Tensor:
    """(N, M, K, K) bool: the entries of HetConv's dense weight that are parameters, every tap
    of the diagonal blocks (filter block g x channel block g) and the centre tap elsewhere."""
    k, c = kernel_size, kernel_size // 2
    mask = (hetconv_block_mask(out_channels, in_channels, part) == 0)[:, :, None, None].repeat(1, 1, k, k)
    mask[:, :, c, c] = True
    return mask


class HetConv2d(nn.Module):
    """Heterogeneous-kernel convolution in its block form, with one dense weight and a mask.

    Args:
        in_channels: M, must be divisible by ``part``.
        out_channels: N, must be divisible by ``part``.
        part: P. ``P = 1`` is a plain KxK convolution (no mask); ``P = M`` leaves one KxK
            kernel per filter.
        kernel_size, stride, padding, bias: as in :class:`torch.nn.Conv2d`
            (padding defaults to "same" for odd kernels).
        training_form: ``split``, ``dense`` or ``auto`` (default): how forward computes (the
            result is the same up to float rounding). ``auto`` is ``split`` on CPU and, on a
            GPU, whichever form trains faster at this input shape, timed once per shape,
            device and dtype in the first call (a few milliseconds) and remembered.

    Attributes:
        weight: (N, M, K, K), the one trainable weight; only its entries where ``mask`` is
            true are used (the others start at zero and get zero gradients).
        bias: (N,) or ``None``.
        mask: (N, M, K, K) bool buffer (``hetconv_weight_mask``), ``None`` for P = 1; not
            saved in the state dict (it follows from the shape).

    The weight starts as the two convolutions of the paper's form would: the diagonal blocks
    as a grouped KxK ``nn.Conv2d`` (groups P) initialises its weight and bias, the centre taps
    of the other blocks as a 1x1 ``nn.Conv2d`` initialises its weight, from the same random
    numbers in the same order, zero elsewhere.

    Example:
        >>> layer = HetConv2d(64, 128, part=4)
        >>> layer(torch.randn(2, 64, 16, 16)).shape
        torch.Size([2, 128, 16, 16])
    """

    mask: torch.Tensor | None  # buffers, registered in __init__ (None for P = 1)
    pointwise_mask: torch.Tensor | None

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
        n, m, k = out_channels, in_channels, kernel_size
        self.weight = nn.Parameter(torch.empty(n, m, k, k))
        self.bias: nn.Parameter | None
        if bias:
            self.bias = nn.Parameter(torch.empty(n))
        else:
            self.register_parameter("bias", None)
        if part > 1:
            self.register_buffer("mask", hetconv_weight_mask(n, m, part, k), persistent=False)
            pointwise_mask = hetconv_block_mask(n, m, part).bool()[:, :, None, None]
            self.register_buffer("pointwise_mask", pointwise_mask, persistent=False)
        else:
            self.register_buffer("mask", None, persistent=False)
            self.register_buffer("pointwise_mask", None, persistent=False)
        self._initialise()

    @torch.no_grad()
    def _initialise(self) -> None:
        """``nn.Conv2d``'s initialisation of the grouped KxK conv (weight, then bias) and of
        the 1x1 conv, in that order, placed into the one weight."""
        n, m, k, p = self.out_channels, self.in_channels, self.kernel_size, self.part
        grouped = torch.empty(n, m // p, k, k)
        nn.init.kaiming_uniform_(grouped, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(grouped)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)
        pointwise = None
        if p > 1:
            pointwise = torch.empty(n, m, 1, 1)
            nn.init.kaiming_uniform_(pointwise, a=math.sqrt(5))
        self.load_parts(grouped, pointwise)

    def dense_weight(self) -> torch.Tensor:
        """(N, M, K, K): the weight as the ``dense`` form convolves with it (masked),
        differentiable."""
        return self.weight if self.mask is None else self.weight * self.mask

    def parts(self, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The two convolutions' weights in ``weight`` (default: the layer's, differentiably;
        any tensor of its shape, such as its gradient): the grouped KxK weight (N, M/P, K, K),
        filter block g's kernels on channel block g, and the 1x1 weight (N, M, 1, 1), the
        centre taps with the block diagonal zero (``None`` for P = 1)."""
        weight = self.weight if weight is None else weight
        if self.pointwise_mask is None:
            return weight, None
        blocks, centre = _dense_indices(self.out_channels, self.in_channels, self.part, self.kernel_size, weight.device)
        grouped, pointwise = _SplitWeight.apply(weight, blocks, centre, self.pointwise_mask)
        return grouped, pointwise

    @torch.no_grad()
    def load_parts(self, grouped: torch.Tensor, pointwise: torch.Tensor | None = None) -> None:
        """Set the weight from the two convolutions' weights (as :meth:`parts` returns them;
        ``pointwise`` is read off the block diagonal only, and required for P > 1)."""
        self.weight.copy_(_assemble(grouped, pointwise, self.part, self.kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        if self._form_for(x) == "dense":
            return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)
        grouped, pointwise = self.parts()
        assert pointwise is not None  # P > 1
        y = F.conv2d(x, grouped, self.bias, self.stride, self.padding, 1, self.part)
        return y + F.conv2d(x, pointwise, None, self.stride)

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
            bias=self.bias is not None,
        ).to(x.device, self.weight.dtype)
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

        if form not in ("split", "dense"):
            raise ValueError(f"unknown HetConv deploy form {form!r}; use split or dense")
        m, n, k = self.in_channels, self.out_channels, self.kernel_size
        if form == "dense" or self.mask is None:
            return self._conv(m, n, k, self.padding, 1, self.dense_weight(), self.bias)
        grouped, pointwise = self.parts()
        assert pointwise is not None  # P > 1
        grouped_conv = self._conv(m, n, k, self.padding, self.part, grouped, self.bias)
        return ConvSum(grouped_conv, self._conv(m, n, 1, 0, 1, pointwise, None))

    def _conv(
        self, m: int, n: int, k: int, padding: int, groups: int, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` at this layer's stride holding copies of ``weight`` and ``bias``
        (built without drawing an initialisation it would overwrite)."""
        like = self.weight
        conv = nn.utils.skip_init(
            nn.Conv2d, m, n, k, self.stride, padding, groups=groups, bias=bias is not None,
            device=like.device, dtype=like.dtype,
        )  # fmt: skip
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
        return conv

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        _upgrade_layer_state(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, part={self.part}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}"
            + ("" if self.bias is None else ", bias=True")
            + ("" if self.training_form == "auto" else f", training_form={self.training_form}")
        )


def upgrade_hetconv_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of the state dict ``state`` for ``model`` in which every HetConv layer saved in
    the two-weight layout of earlier versions (``gwc.weight``, ``gwc.bias``, ``pwc.weight``,
    ``mask``) holds the same parameters as one ``weight`` (and ``bias``). Entries that do not
    fit a layer's shape are left as they are, for the caller to report.
    ``model.load_state_dict`` converts such entries by itself."""
    state = dict(state)
    for name, module in model.named_modules():
        if isinstance(module, HetConv2d):
            _upgrade_layer_state(module, state, f"{name}." if name else "")
    return state


def _upgrade_layer_state(layer: HetConv2d, state: dict, prefix: str) -> None:
    """Convert ``layer``'s entries of ``state`` (under ``prefix``) from the two-weight layout, in
    place, where they are in it and fit the layer's shape."""
    n, m, k, p = layer.out_channels, layer.in_channels, layer.kernel_size, layer.part
    grouped, pointwise = state.get(prefix + "gwc.weight"), state.get(prefix + "pwc.weight")
    if grouped is None or prefix + "weight" in state or tuple(grouped.shape) != (n, m // p, k, k):
        return
    if p > 1 and (pointwise is None or tuple(pointwise.shape) != (n, m, 1, 1)):
        return
    state[prefix + "weight"] = _assemble(grouped, pointwise, p, k)
    for old in ("gwc.weight", "pwc.weight", "mask"):
        state.pop(prefix + old, None)
    if prefix + "gwc.bias" in state:
        state[prefix + "bias"] = state.pop(prefix + "gwc.bias")


def _assemble(grouped: torch.Tensor, pointwise: torch.Tensor | None, part: int, k: int) -> torch.Tensor:
    """The dense (N, M, K, K) weight of a grouped KxK weight (N, M/P, K, K) and a 1x1 weight
    (N, M, 1, 1): the 1x1 kernels at the centre tap, the grouped kernels written over the
    diagonal blocks (so the 1x1 weight's block diagonal is never read), zero elsewhere."""
    if pointwise is None:
        return grouped.clone()
    c = k // 2
    blocks, _ = _dense_indices(grouped.shape[0], pointwise.shape[1], part, k, grouped.device)
    return F.pad(pointwise, (c, k - 1 - c, c, k - 1 - c)).put_(blocks, grouped.to(pointwise.dtype))


class _SplitWeight(torch.autograd.Function):
    """The split form's two weights read from the dense one: forward a gather of the diagonal
    blocks (the grouped KxK weight) and a gather of the centre taps times the 1x1 mask (three
    kernels); backward the 1x1 gradient padded to the centre tap with the grouped gradient
    written over the diagonal blocks (two kernels, and exactly the masked dense gradient:
    zero off the mask). Autograd of the same gathers takes about twice the calls."""

    @staticmethod
    def forward(
        ctx: Any, weight: torch.Tensor, blocks: torch.Tensor, centre: torch.Tensor, pointwise_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(blocks)
        ctx.kernel_size = weight.shape[-1]
        return weight.take(blocks), weight.take(centre) * pointwise_mask

    @staticmethod
    def backward(ctx: Any, grad_grouped: torch.Tensor, grad_pointwise: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (blocks,) = ctx.saved_tensors
        k, c = ctx.kernel_size, ctx.kernel_size // 2
        grad = F.pad(grad_pointwise, (c, k - 1 - c, c, k - 1 - c)).put_(blocks, grad_grouped)
        return grad, None, None, None


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
