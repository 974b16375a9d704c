"""The partial operator's mask machinery, one module per job:

* :mod:`~pconv3d.masks.carrier`: the :class:`Mask` carrier (a mask and what is known about it, for the layers
  of one call) and what blocks do with masks (channels, unions, padding);
* :mod:`~pconv3d.masks.apply`: applying a mask, with exact zeros in the holes;
* :mod:`~pconv3d.masks.counting`: counting windows, and :func:`~pconv3d.masks.counting.window_stats`, the
  one entry point for a layer's window statistics;
* :mod:`~pconv3d.masks.compiled`: those statistics as the ``torch.library`` operator ``torch.compile`` calls;
* :mod:`~pconv3d.masks.mode`: :func:`~pconv3d.masks.mode.execution_mode`, the one place that asks whether
  the code runs eagerly, scripted, traced, exported or compiled.

The layers themselves are :mod:`pconv3d.partial_conv` (and :mod:`pconv3d.blocks.conv_transpose`);
``docs/design/mask-core.md`` walks through one network call.
"""

from pconv3d.masks import compiled  # noqa: F401  registers pconv3d::window_stats, which window_stats calls
from pconv3d.masks.apply import apply_mask, mark_clean
from pconv3d.masks.carrier import (
    Mask,
    all_valid,
    any_channel,
    as_carrier,
    as_given,
    first_channel,
    mask_intersection,
    mask_union,
    pad_mask,
    shuffle_mask,
    tensor_of,
)
from pconv3d.masks.counting import window_stats

__all__ = [
    "Mask",
    "all_valid",
    "any_channel",
    "apply_mask",
    "as_carrier",
    "as_given",
    "first_channel",
    "mark_clean",
    "mask_intersection",
    "mask_union",
    "pad_mask",
    "shuffle_mask",
    "tensor_of",
    "window_stats",
]
