"""Convolution layers searched by the tool: pure ``nn.Module``s, no knowledge of models or search."""

from .assignment_batch import AssignmentBatch, forget_assignments, share_assignments
from .aten_count import StepCount, count_training_step
from .capture import capture_blocker
from .create_conv2d import LAYER_TYPES, create_conv2d
from .deployed import ChannelGather, ConvSum, GroupSplitConv
from .flgc import FLGConv2d, balanced_assignment, device_balanced_assignment, param_groups_without_logit_decay
from .hetconv import HetConv2d, hetconv_block_mask, hetconv_weight_mask, upgrade_hetconv_state
from .super_conv import ConvChoice, ConvSlot, SuperConv2d

__all__ = [
    "LAYER_TYPES",
    "AssignmentBatch",
    "ChannelGather",
    "ConvChoice",
    "ConvSlot",
    "ConvSum",
    "GroupSplitConv",
    "FLGConv2d",
    "HetConv2d",
    "StepCount",
    "SuperConv2d",
    "balanced_assignment",
    "capture_blocker",
    "device_balanced_assignment",
    "count_training_step",
    "create_conv2d",
    "forget_assignments",
    "hetconv_block_mask",
    "hetconv_weight_mask",
    "param_groups_without_logit_decay",
    "share_assignments",
    "upgrade_hetconv_state",
]
