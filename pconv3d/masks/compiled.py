"""A layer's window statistics as one ``torch.library`` operator, ``pconv3d::window_stats``, which
:func:`~pconv3d.masks.counting.window_stats` calls inside ``torch.compile``.

Inlined, the window sums were recomputed for every output channel in the kernels that read them, and strided
windows kept those kernels from vectorizing. Opaque to the compiler, they are computed once, at the mask's
size, as in eager mode. Exported graphs never contain the operator: they keep standard operators.
"""

from typing import List, Tuple

import torch
from torch import Tensor

from pconv3d.masks.carrier import all_valid
from pconv3d.masks.counting import Windows, _all_valid_stats, _counted_stats

__all__: List[str] = []  # reached through pconv3d.masks.counting.window_stats


@torch.library.custom_op("pconv3d::window_stats", mutates_args=())
def _window_stats_op(
    mask: Tensor,
    kernel_size: List[int],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    pre_pad: List[int],
    pad_mode: str,
    output_padding: List[int],
    transposed: bool,
    groups: int,
    dtype: torch.dtype,
) -> Tuple[Tensor, Tensor]:
    windows = Windows(kernel_size, stride, padding, dilation, pre_pad, pad_mode, output_padding, transposed)
    spatial = list(mask.shape[2:])
    # the graph cannot depend on the mask's values, this operator can: a mask that is all valid (read where
    # that is cheap) has the statistics of its geometry, as in eager mode
    if mask.shape[1] == 1 and all_valid(mask):
        full = _all_valid_stats(windows, spatial, dtype, mask.device)
        if full is not None:
            shape = [mask.shape[0], 1] + list(full.ratio.shape[2:])
            return full.ratio.expand(shape).contiguous(), full.valid.expand(shape).contiguous()
    ratio, valid, _ = _counted_stats(windows, mask, spatial, groups, dtype, mask.device)
    return ratio, valid


@_window_stats_op.register_fake
def _(mask, kernel_size, stride, padding, dilation, pre_pad, pad_mode, output_padding, transposed, groups, dtype):
    windows = Windows(kernel_size, stride, padding, dilation, pre_pad, pad_mode, output_padding, transposed)
    spatial = list(mask.shape[2:])
    shape = [mask.shape[0], groups if mask.shape[1] > 1 else 1]
    shape += [windows.out_length(spatial, i) for i in range(len(spatial))]
    return mask.new_empty(shape, dtype=dtype), mask.new_empty(shape, dtype=dtype)
