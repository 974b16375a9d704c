"""Partial convolution written straight from the formula: float64, explicit windows, no shortcuts.

For every output position and group g: ``S`` = sum of the mask over the window (over the group's input
channels too for a multi-channel mask), ``winsize`` = number of mask elements summed,
``out = sum(W * X * M) * winsize / S + b`` if ``S > 0`` else 0, and ``mask_out = [S > 0]``.
Holes are zeroed by selection, so whatever they hold cannot leak into the oracle either.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def pad_amounts(kernel_size, dilation, padding) -> list[tuple[int, int]]:
    """(left, right) padding per spatial dim for an int tuple, 'same' or 'valid'."""
    if padding == "valid":
        return [(0, 0)] * len(kernel_size)
    if padding == "same":
        out = []
        for k, d in zip(kernel_size, dilation):
            total = d * (k - 1)
            out.append((total // 2, total - total // 2))
        return out
    return [(p, p) for p in padding]


def windows(t: Tensor, kernel_size, stride, dilation) -> Tensor:
    """(N, C, *P) padded tensor -> (N, C, O, K): every window's elements, O positions, K kernel taps."""
    nd = len(kernel_size)
    for i, (k, s, d) in enumerate(zip(kernel_size, stride, dilation)):
        t = t.unfold(2 + i, d * (k - 1) + 1, s)[..., ::d]
    n, c = t.shape[:2]
    o = math.prod(t.shape[2 : 2 + nd])
    return t.reshape(n, c, o, -1), t.shape[2 : 2 + nd]


def partial_conv_oracle(x, weight, bias, mask, *, stride, padding, dilation, groups, padding_mode="zeros", multi_channel=False):
    """Returns (out, mask_out) in float64; ``mask`` may be None (all valid, zero padding missing)."""
    x = x.double()
    n, c_in = x.shape[:2]
    spatial = x.shape[2:]
    ks = tuple(weight.shape[2:])
    m = torch.ones(1, 1, *spatial, dtype=torch.float64) if mask is None else mask.double()
    m = m.expand(n, m.shape[1], *spatial)
    xm = torch.where(m != 0, x * m, torch.zeros((), dtype=torch.float64))
    pads = pad_amounts(ks, dilation, padding)
    flat = [p for lr in reversed(pads) for p in lr]
    mode = "constant" if padding_mode == "zeros" else padding_mode
    xm = F.pad(xm, flat, mode=mode)
    m = F.pad(m, flat, mode=mode)
    xw, out_sp = windows(xm, ks, stride, dilation)
    mw, _ = windows(m, ks, stride, dilation)
    g = groups
    c_out = weight.shape[0]
    w = weight.double().reshape(g, c_out // g, c_in // g, -1)
    raw = torch.einsum("ngcok,gfck->ngfo", xw.reshape(n, g, c_in // g, *xw.shape[2:]), w)
    if mw.shape[1] == 1:
        s = mw.sum(-1).unsqueeze(1)  # (n, 1, 1, O)
        winsize = mw.shape[-1]
    else:
        mg = mw.reshape(n, g, c_in // g, *mw.shape[2:])
        s = mg.sum((2, 4)).unsqueeze(2)  # (n, g, 1, O)
        winsize = mg.shape[2] * mg.shape[-1]
    b = torch.zeros(c_out, dtype=torch.float64) if bias is None else bias.double()
    safe = torch.where(s > 0, s, torch.ones_like(s))
    out = torch.where(s > 0, raw * winsize / safe + b.reshape(1, g, c_out // g, 1), torch.zeros((), dtype=torch.float64))
    out = out.reshape(n, c_out, *out_sp)
    valid = (s > 0).double().expand(n, s.shape[1], c_out // g if s.shape[1] > 1 else 1, s.shape[-1])
    valid = valid.reshape(n, -1, *out_sp)
    if multi_channel:
        valid = valid.expand(n, c_out, *out_sp) if valid.shape[1] == 1 else valid
    return out, valid
