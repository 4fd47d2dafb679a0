"""FLGC's masked weight ``W * M`` with the straight-through gradient to the assignment logits
(hard one-hots forward, the gradient of their softmax backward), in one autograd node.

At CIFAR scale a GPU is bound by how many kernels a step launches, so the node is written for
few ops: one multiply forward; backward the masked weight gradient, ``dL/dM = sum_kk dL/dW' *
W``, ``dL/dB_out = dL/dM @ B_in``, ``dL/dB_in = dL/dM^T @ B_out`` and the softmax backward,
with the softmax the assignment already computed (:class:`layers.assignment_batch.HardAssignment`).
"""

from __future__ import annotations

from typing import Any

import torch

from .assignment_batch import HardAssignment

__all__ = ["masked_weight", "one_hot", "straight_through_one_hot"]


def one_hot(index: torch.Tensor, classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``F.one_hot`` without its range check, which waits on the GPU."""
    return (index[:, None] == torch.arange(classes, device=index.device)).to(dtype)


def straight_through_one_hot(logits: torch.Tensor, hard_index: torch.Tensor) -> torch.Tensor:
    """One-hot of ``hard_index`` in the forward pass, gradient of softmax(logits) backward: the
    plain form of what :func:`masked_weight` computes in one node (the tests' reference)."""
    soft = logits.softmax(dim=1)
    hard = one_hot(hard_index, logits.shape[1], soft.dtype)
    return hard + soft - soft.detach()


class _MaskedWeight(torch.autograd.Function):
    """``weight * mask`` with FLGC's straight-through gradients to the logits.

    Same values and gradients as building ``mask = B_out @ B_in^T`` from straight-through
    one-hots and multiplying (``tests/test_flgc.py`` checks it against that form)."""

    @staticmethod
    def forward(
        ctx: Any,
        weight: torch.Tensor,
        in_logits: torch.Tensor,
        out_logits: torch.Tensor,
        hard: HardAssignment,
    ) -> torch.Tensor:
        mask = hard.mask.view(*hard.mask.shape, 1, 1)
        soft_in, soft_out = hard.soft_in, hard.soft_out  # the assignment's, or (reused past it) None
        if soft_in is None or soft_out is None:
            soft_in, soft_out = in_logits.softmax(dim=1), out_logits.softmax(dim=1)
        ctx.save_for_backward(weight, mask, hard.b_in, hard.b_out, soft_in, soft_out)
        return weight * mask

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight, mask, b_in, b_out, soft_in, soft_out = ctx.saved_tensors
        grad_weight = grad * mask if ctx.needs_input_grad[0] else None
        grad_in = grad_out = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            product = grad * weight
            # (N, C): one reduction over the kernel taps, a view for 1 x 1 kernels
            grad_mask = product.view(product.shape[:2]) if product.shape[2:] == (1, 1) else product.sum(dim=(2, 3))
            grad_in = _softmax_backward(grad_mask.t().mm(b_out), soft_in)
            grad_out = _softmax_backward(grad_mask.mm(b_in), soft_out)
        return grad_weight, grad_in, grad_out, None


def _softmax_backward(grad: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._softmax_backward_data(grad.to(soft.dtype), soft, 1, soft.dtype)


def masked_weight(
    weight: torch.Tensor, in_logits: torch.Tensor, out_logits: torch.Tensor, hard: HardAssignment, training: bool
) -> torch.Tensor:
    """``weight * mask`` (the mask over the kernel's spatial dimensions). In ``training``, one
    autograd node that also gives the logits FLGC's straight-through gradient (that of
    building the mask from :func:`straight_through_one_hot` one-hots). ``hard.soft_in`` and
    ``hard.soft_out`` must be the softmax of these logits, or None (then it is recomputed)."""
    if training:
        return _MaskedWeight.apply(weight, in_logits, out_logits, hard)
    return weight * hard.mask.view(*hard.mask.shape, 1, 1)
