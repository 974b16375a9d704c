"""The published partial-convolution algorithm, written from its description, as a timing baseline.

It follows the reference design on purpose (it is what we measure against): a persistent ones-kernel of
shape (C_out, C_in, *k) with ``multi_channel`` or (1, 1, *k) otherwise, statistics ``winsize / (S + 1e-8)``,
then raw-minus-bias, ratio, plus-bias and times-mask as separate passes, and the last mask statistics
kept on the module. Not part of the library: use :mod:`pconv3d` instead. It lives with the tests, which
check pconv3d against it, and the benchmarks import it from here (tests import nothing from benchmarks).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class ReferencePartialConv3d(nn.Conv3d):
    """Baseline partial convolution with the reference interface: ``forward(input, mask_in=None)``."""

    def __init__(self, *args, multi_channel: bool = False, return_mask: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.multi_channel = multi_channel
        self.return_mask = return_mask
        shape = (self.out_channels, self.in_channels) if multi_channel else (1, 1)
        self.weight_maskUpdater = torch.ones(*shape, *self.kernel_size)
        self.slide_winsize = float(self.weight_maskUpdater[0].numel())
        self.last_size = None
        self.update_mask = None
        self.mask_ratio = None

    def forward(self, input: Tensor, mask_in: Tensor | None = None):
        if mask_in is not None or self.last_size != tuple(input.shape):
            self.last_size = tuple(input.shape)
            with torch.no_grad():
                self.weight_maskUpdater = self.weight_maskUpdater.to(input)
                if mask_in is None:
                    n, c = (input.shape[0], input.shape[1]) if self.multi_channel else (1, 1)
                    mask = torch.ones(n, c, *input.shape[2:]).to(input)
                else:
                    mask = mask_in
                update = F.conv3d(mask, self.weight_maskUpdater, None, self.stride, self.padding, self.dilation, 1)
                ratio = self.slide_winsize / (update + 1e-8)
                self.update_mask = torch.clamp(update, 0, 1)
                self.mask_ratio = torch.mul(ratio, self.update_mask)
        raw_out = super().forward(torch.mul(input, mask_in) if mask_in is not None else input)
        if self.bias is not None:
            bias_view = self.bias.view(1, self.out_channels, 1, 1, 1)
            output = torch.mul(raw_out - bias_view, self.mask_ratio) + bias_view
            output = torch.mul(output, self.update_mask)
        else:
            output = torch.mul(raw_out, self.mask_ratio)
        return (output, self.update_mask) if self.return_mask else output
