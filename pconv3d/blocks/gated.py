"""Gated versions of MONAI's ``Convolution`` and ``ResidualUnit``: a learned soft mask per output voxel.

Gated convolution (Yu et al., "Free-Form Image Inpainting with Gated Convolution", ICCV 2019) lets the
network learn where its input can be trusted instead of being told by a fixed mask rule: a block's output is
multiplied by ``sigmoid(gate(x))``, ``gate`` a convolution of the block's input. The mask reaches the gates as
an input channel (the input recipe's ``mask_as_channel``), so the first gates see it directly and later ones see what the
features make of it.

Design: composition. :class:`Gated` holds a MONAI block, untouched, and its gate; :func:`gate_for` builds the
gate from the block's own convolution layer (kernel, stride, padding, dilation, groups, and for transposed
blocks the output padding), so the two cannot disagree whatever arguments the block was given.
:class:`GatedConvolution` and :class:`GatedResidualUnit` take MONAI's arguments, build MONAI's block with all
of them and gate it; indexing a ``GatedConvolution`` indexes MONAI's ``Convolution`` (``block[-1]`` is its
last layer, never the gate).

``state_dict`` keys are the block's own (no ``block.`` prefix) plus ``gate.weight`` and ``gate.bias``, as if
the gate were a child of MONAI's block: a trained MONAI network's weights load with ``strict=False`` (only the
gates are new), and a gate whose sigmoid is 1 gives MONAI's block exactly. ``named_parameters`` and
``named_modules`` show the composition (``block.conv.weight``); the ``state_dict`` and ``load_state_dict``
hooks of :class:`Gated` translate between the two (loading accepts both spellings). TorchScript keeps no
Python hooks, so a scripted gated module's ``state_dict`` has the composed keys (which the eager one loads).

Speed: a gate reads the same input with the same geometry as its block's first convolution, and so does a
strided residual unit's residual convolution. :func:`conv_together` stacks such layers' weights along the output
channels and runs them as one convolution call: the same sums, one pass over the input (what it saves is
measured by ``benchmarks/bench_recipes.py``). The parameters stay separate, so the keys and the weights are
unchanged. TorchScript runs the layers one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.layers.factories import Conv
from torch import Tensor
from torch.nn.modules.conv import _ConvNd

__all__ = ["GATE_BIAS", "Gated", "GatedConvolution", "GatedResidualUnit", "conv_together", "gate_for"]

# a new gate starts mostly open (sigmoid(2) = 0.88), so a gated network starts close to its plain twin
GATE_BIAS = 2.0


def gate_for(conv: nn.Module, channels: int | None = None) -> nn.Module:
    """A gating convolution with ``conv``'s geometry, from MONAI's ``Conv`` factory, its bias at ``GATE_BIAS``.

    Same input channels, kernel size, stride, padding (and padding mode), dilation and groups as ``conv``; for a
    transposed ``conv`` a transposed convolution with the same output padding. So the gate's output has the
    spatial shape of ``conv``'s for any input, and broadcasts against it. The gate always has a bias (it starts
    the gate open), whether or not ``conv`` has one.

    Args:
        conv: a convolution layer (``torch.nn.Conv1d`` ... ``ConvTranspose3d`` or a subclass).
        channels: the gate's output channels: ``None`` for one gate per output channel of ``conv`` (Yu et al.),
            ``1`` for one gate map shared by all of them (a fraction of the cost: the gate convolution has one
            output channel, and groups are then 1).

    Raises:
        ValueError: if ``conv`` is not a convolution layer, or ``channels`` neither ``None``, 1 nor
            ``conv.out_channels``.

    Example::

        >>> gate = gate_for(nn.Conv3d(2, 8, 3, stride=2, padding=2, dilation=2))
        >>> gate.stride, gate.padding, gate.dilation, gate.bias[0].item()
        ((2, 2, 2), (2, 2, 2), (2, 2, 2), 2.0)
    """
    if not isinstance(conv, _ConvNd):
        raise ValueError(f"a gate copies the geometry of a convolution layer, not of {type(conv).__name__}")
    if channels not in (None, 1, conv.out_channels):
        raise ValueError(f"channels: a gate has 1 or {conv.out_channels} (the block's) output channels, got {channels}")
    channels = conv.out_channels if channels is None else channels
    geometry: dict[str, Any] = dict(
        kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
        groups=conv.groups if channels == conv.out_channels else 1, padding_mode=conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype,
    )
    if conv.transposed:
        geometry["output_padding"] = conv.output_padding
    kind = Conv.CONVTRANS if conv.transposed else Conv.CONV
    gate = Conv[kind, len(conv.kernel_size)](conv.in_channels, channels, **geometry)
    nn.init.constant_(gate.bias, GATE_BIAS)
    return gate


_FUNCTIONAL = {(False, 1): F.conv1d, (False, 2): F.conv2d, (False, 3): F.conv3d,
               (True, 1): F.conv_transpose1d, (True, 2): F.conv_transpose2d, (True, 3): F.conv_transpose3d}
_SHARED = ("in_channels", "kernel_size", "stride", "padding", "dilation", "output_padding", "transposed")


def _stackable(convs: Sequence[nn.Module]) -> bool:
    """Whether :func:`conv_together` can run ``convs`` as one call: convolution layers of one type and geometry
    (input channels, kernel, stride, padding, dilation, output padding), zero padding, no groups."""
    first = convs[0]
    return all(isinstance(c, _ConvNd) and type(c) is type(first) and c.groups == 1 and c.padding_mode == "zeros"
               and all(getattr(c, a) == getattr(first, a) for a in _SHARED) for c in convs)


def conv_together(x: Tensor, convs: Sequence[_ConvNd]) -> list[Tensor]:
    """``[conv(x) for conv in convs]`` as one convolution call: the layers' weights stacked along the output
    channels, the result split back. Each output channel is the same sum as its own layer's; the input is read
    once. ``convs`` must be stackable (``_stackable``); a layer without a bias adds zeros.

    Example::

        >>> a, b = nn.Conv3d(2, 4, 3, padding=1), nn.Conv3d(2, 1, 3, padding=1, bias=False)
        >>> x = torch.randn(1, 2, 8, 8, 8)
        >>> ya, yb = conv_together(x, [a, b])
        >>> torch.allclose(ya, a(x), atol=1e-6), torch.allclose(yb, b(x), atol=1e-6)
        (True, True)
    """
    first = convs[0]
    transposed = bool(first.transposed)
    weight = torch.cat([c.weight for c in convs], dim=1 if transposed else 0)
    bias = torch.cat([c.weight.new_zeros(c.out_channels) if c.bias is None else c.bias for c in convs])
    conv = _FUNCTIONAL[transposed, len(first.kernel_size)]
    if transposed:
        y = conv(x, weight, bias, first.stride, first.padding, first.output_padding, 1, first.dilation)
    else:
        y = conv(x, weight, bias, first.stride, first.padding, first.dilation, 1)
    return list(torch.split(y, [c.out_channels for c in convs], dim=1))


class Gated(nn.Module):
    """A block whose output is gated: ``block(x) * sigmoid(gate(x))``.

    ``state_dict`` keys are ``block``'s without the ``block.`` prefix, then ``gate.*`` (see the module
    docstring); ``load_state_dict`` takes them so, or prefixed (``named_parameters``' names). The errors of a
    strict ``load_state_dict`` name the prefixed keys.

    Args:
        block: any module with nothing named ``gate`` or ``block`` (its keys would be ambiguous).
        gate: a module of ``x`` whose output broadcasts against ``block(x)``, e.g. :func:`gate_for` of the
            block's convolution layer.

    Raises:
        ValueError: if ``block`` has a child, parameter or buffer named ``gate`` or ``block``.

    Example::

        >>> conv = nn.Conv3d(2, 8, 3, padding=1)
        >>> gated = Gated(conv, gate_for(conv))
        >>> gated(torch.randn(1, 2, 8, 8, 8)).shape, list(gated.state_dict())
        (torch.Size([1, 8, 8, 8, 8]), ['weight', 'bias', 'gate.weight', 'gate.bias'])
    """

    def __init__(self, block: nn.Module, gate: nn.Module) -> None:
        super().__init__()
        clashes = sorted(_local_names(block) & {"block", "gate"})
        if clashes:
            raise ValueError(f"{type(block).__name__} has its own {clashes}: its state_dict keys would be ambiguous")
        self.block = block
        self.gate = gate
        self.register_state_dict_post_hook(_unprefix_block)
        self.register_load_state_dict_pre_hook(_prefix_block)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript runs the layers one by one
            return self._composed(x)
        return self._forward_stacked(x)

    def _composed(self, x: Tensor) -> Tensor:
        return self.block(x) * torch.sigmoid(self.gate(x))

    @torch.jit.unused
    def _forward_stacked(self, x: Tensor) -> Tensor:
        """``forward`` in eager mode; subclasses whose gate shares its block's first convolution stack the two."""
        return self._composed(x)


def _local_names(module: nn.Module) -> set[str]:
    """The first components of ``module``'s ``state_dict`` keys: its children, parameters and buffers."""
    return ({name for name, _ in module.named_children()} | {name for name, _ in module.named_parameters(recurse=False)}
            | {name for name, _ in module.named_buffers(recurse=False)})


def _unprefix_block(module: Gated, state_dict: dict[str, Any], prefix: str, local_metadata: dict) -> None:
    """``state_dict`` hook: ``{prefix}block.{key}`` becomes ``{prefix}{key}``, in the same order."""
    nested = prefix + "block."
    for key in [k for k in state_dict if k.startswith(prefix)]:  # this module's keys: the last ones
        value = state_dict.pop(key)
        state_dict[prefix + key[len(nested):] if key.startswith(nested) else key] = value
    metadata: dict[str, Any] | None = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        metadata.pop(nested[:-1], None)  # the block's own entry: the module's is at prefix
        for key in [k for k in metadata if k.startswith(nested)]:
            metadata[prefix + key[len(nested):]] = metadata.pop(key)


def _prefix_block(module: Gated, state_dict: dict[str, Any], prefix: str, local_metadata: dict, strict: bool,
                  missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
    """``load_state_dict`` pre-hook: ``{prefix}{key}`` becomes ``{prefix}block.{key}`` for the block's keys."""
    names = _local_names(module.block)
    for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0] in names]:
        state_dict[prefix + "block." + key[len(prefix):]] = state_dict.pop(key)


class GatedConvolution(Gated):
    """MONAI ``Convolution`` whose output is gated: ``Convolution(x) * sigmoid(gate(x))``.

    All arguments but ``gate_channels`` are ``monai.networks.blocks.Convolution``'s (``padding``, ``dilation``,
    ``groups``, ``is_transposed``, ``output_padding`` ... included), handed to it unchanged; the gate has the
    geometry of its convolution layer and ``gate_channels`` output channels (:func:`gate_for`: ``None`` one
    per output channel, ``1`` one shared map). Indexing, iterating and ``len`` are the ``Convolution``'s.

    Example::

        >>> block = GatedConvolution(3, 2, 8, strides=2, dilation=2)
        >>> block(torch.randn(1, 2, 16, 16, 16)).shape
        torch.Size([1, 8, 8, 8, 8])
        >>> block.gate.dilation, type(block[-1]).__name__
        ((2, 2, 2), 'ADN')
    """

    def __init__(self, *args: Any, gate_channels: int | None = None, **kwargs: Any) -> None:
        block = Convolution(*args, **kwargs)
        super().__init__(block, gate_for(block.conv, gate_channels))

    @torch.jit.unused
    def _forward_stacked(self, x: Tensor) -> Tensor:
        if not _stackable([self.block.conv, self.gate]):  # a one-map gate of a grouped convolution
            return self._composed(x)
        y, gate = conv_together(x, [self.block.conv, self.gate])
        for layer in list(self.block)[1:]:  # the ADN after the convolution, if any
            y = layer(y)
        return y * torch.sigmoid(gate)

    def __getitem__(self, index: int | slice) -> nn.Module:
        return self.block[index]

    def __len__(self) -> int:
        return len(self.block)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.block)


class GatedResidualUnit(Gated):
    """MONAI ``ResidualUnit`` whose output (convolutions plus residual) is gated: ``unit(x) * sigmoid(gate(x))``.

    All arguments but ``gate_channels`` are ``monai.networks.blocks.ResidualUnit``'s (``padding`` and
    ``dilation`` included), handed to it unchanged; the gate has the geometry of the unit's first convolution
    layer, which sets the unit's stride and output size, and ``gate_channels`` output channels
    (:func:`gate_for`).

    Example::

        >>> unit = GatedResidualUnit(3, 2, 8, strides=2, subunits=2)
        >>> unit(torch.randn(1, 2, 16, 16, 16)).shape
        torch.Size([1, 8, 8, 8, 8])
    """

    def __init__(self, *args: Any, gate_channels: int | None = None, **kwargs: Any) -> None:
        block = ResidualUnit(*args, **kwargs)
        super().__init__(block, gate_for(block.conv.unit0.conv, gate_channels))

    @torch.jit.unused
    def _forward_stacked(self, x: Tensor) -> Tensor:
        if not _stackable([self.block.conv.unit0.conv, self.gate]):
            return self._composed(x)
        # MONAI's ResidualUnit.forward, its first convolution, the gate and (strided units) the residual in one call
        unit0, residual = self.block.conv.unit0, self.block.residual
        convs = [unit0.conv, self.gate]
        if _stackable([unit0.conv, residual]):
            convs.append(residual)
        y, gate, *stacked = conv_together(x, convs)
        for layer in list(unit0)[1:] + list(self.block.conv)[1:]:  # unit0's ADN, then the other subunits
            y = layer(y)
        return (y + (stacked[0] if stacked else residual(x))) * torch.sigmoid(gate)
