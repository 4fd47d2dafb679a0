"""Inference forms of the searched layers, built only from standard convolutions.

- :class:`ChannelGather`: ``x[:, index]``. Deploying FLGC puts one before and one after a
  standard grouped convolution; :func:`models.deploy` then folds them into neighbouring layers
  wherever that is exact, so most never run.
- :class:`ConvSum`: ``conv_a(x) + conv_b(x)``, HetConv's deployed form (a grouped KxK conv
  and a 1x1 conv with the mask baked into its weights).
- :class:`GroupSplitConv`: one small convolution per group, for FLGC with free (unbalanced)
  groups, which no single grouped convolution can run.

Annotations here are evaluated (no ``from __future__ import annotations``): TorchScript reads
the class-level annotations of the buffers and needs real types, not strings.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ChannelGather", "ConvSum", "GroupSplitConv"]


class ChannelGather(nn.Module):
    """``x[:, index]`` along the channel dimension.

    Two exact ways to run it: an index copy (fast in NCHW, where it copies whole planes), or,
    after :meth:`run_as_conv`, a 1x1 convolution with a 0/1 selection matrix. In channels_last
    a channel gather moves single floats and can cost more than the convolution next to it;
    the 1x1 convolution runs as one optimised matrix product instead (measured on this CPU:
    4x faster at 64 channels 32x32, a little slower at 512 channels 2x2), so
    :func:`models.deploy` times both where a gather remains and keeps the faster.
    """

    index: torch.Tensor  # buffers, registered in __init__
    selection: torch.Tensor

    def __init__(self, index: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("index", index.to(torch.long).clone())
        self.register_buffer("selection", torch.zeros(0))  # (len(index), C, 1, 1) once run as a conv
        self.as_conv = False

    @torch.no_grad()
    def run_as_conv(self, as_conv: bool, channels: int, dtype: torch.dtype) -> None:
        """Switch form; ``channels`` is the input's, ``dtype`` the activations'. Call it only
        once ``index`` is final (folding rewrites it)."""
        self.as_conv = as_conv
        if as_conv:
            selection = torch.zeros(self.index.numel(), channels, 1, 1, dtype=dtype, device=self.index.device)
            selection[torch.arange(self.index.numel(), device=self.index.device), self.index] = 1
            self.selection = selection
        else:
            self.selection = torch.zeros(0, dtype=dtype, device=self.index.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.as_conv:
            return F.conv2d(x, self.selection)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            # Gather along the innermost (channel) axis of the NHWC layout: contiguous reads,
            # and the result stays channels_last for the convolution that follows.
            return x.permute(0, 2, 3, 1).index_select(3, self.index).permute(0, 3, 1, 2)
        return x.index_select(1, self.index)

    def extra_repr(self) -> str:
        return f"channels={self.index.numel()}" + (", as 1x1 conv" if self.as_conv else "")


class ConvSum(nn.Module):
    """Sum of two convolutions of the same input (HetConv: grouped KxK + 1x1)."""

    def __init__(self, conv_a: nn.Conv2d, conv_b: nn.Conv2d) -> None:
        super().__init__()
        self.conv_a = conv_a
        self.conv_b = conv_b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_a(x) + self.conv_b(x)


class GroupSplitConv(nn.Module):
    """Per-group convolutions for unbalanced groups: branch g gathers its input channels and
    convolves them; the concatenated outputs are put back in filter order."""

    restore: torch.Tensor  # buffer, registered in __init__

    def __init__(
        self, convs: list[nn.Conv2d], in_indices: list[torch.Tensor], out_indices: list[torch.Tensor], out_channels: int
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.branches = nn.ModuleList(nn.Sequential(ChannelGather(i), conv) for i, conv in zip(in_indices, convs))
        order = torch.cat([o.to(torch.long) for o in out_indices]) if out_indices else torch.zeros(0, dtype=torch.long)
        self.register_buffer("restore", torch.argsort(order))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1).index_select(1, self.restore)
