"""Registration of the partial layers in MONAI's layer factories, under new names only.

Importing :mod:`pconv3d.blocks` runs this module, after which MONAI-style arguments reach them::

    Conv["partialconv", 3]        -> PartialConv3d            Norm["maskedinstance", 3] -> MaskedInstanceNorm3d
    Conv["partialconvtrans", 3]   -> PartialConvTranspose3d   Norm["maskedbatch", 3]    -> MaskedBatchNorm3d
                                                              Norm["maskedgroup", 3]    -> MaskedGroupNorm

so ``norm=("maskedinstance", {"affine": True})`` works wherever MONAI takes a ``norm``. MONAI's own names
(``"conv"``, ``"instance"``, ...) are never overridden. The partial blocks look their convolution classes
up here when they are built, so re-registering ``"partialconv"`` swaps the layer of every block built
afterwards (the benchmark does this to build the same network on a baseline layer).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from monai.networks.layers.factories import Conv, Norm, split_args

from pconv3d.blocks.conv_transpose import PartialConvTranspose1d, PartialConvTranspose2d, PartialConvTranspose3d
from pconv3d.blocks.norm import (
    MaskedBatchNorm1d,
    MaskedBatchNorm2d,
    MaskedBatchNorm3d,
    MaskedGroupNorm,
    MaskedInstanceNorm1d,
    MaskedInstanceNorm2d,
    MaskedInstanceNorm3d,
    MaskedNorm,
)
from pconv3d.partial_conv import PartialConv1d, PartialConv2d, PartialConv3d

__all__ = ["PARTIAL_CONV", "PARTIAL_CONVTRANS", "masked_norm"]

PARTIAL_CONV = "PARTIALCONV"
PARTIAL_CONVTRANS = "PARTIALCONVTRANS"

# MONAI norm names and their mask-aware counterparts (the masked names map to themselves)
_MASKED_NORM_NAMES = {
    "INSTANCE": "MASKEDINSTANCE",
    "INSTANCE_NVFUSER": "MASKEDINSTANCE",
    "BATCH": "MASKEDBATCH",
    "GROUP": "MASKEDGROUP",
    "MASKEDINSTANCE": "MASKEDINSTANCE",
    "MASKEDBATCH": "MASKEDBATCH",
    "MASKEDGROUP": "MASKEDGROUP",
}


def _by_dim(*types: type) -> Any:
    def factory(dim: int) -> type:
        return types[dim - 1]

    return factory


def _register() -> None:
    Conv.add_factory_callable(
        PARTIAL_CONV, _by_dim(PartialConv1d, PartialConv2d, PartialConv3d), "Partial convolution in 1, 2, 3 dims."
    )
    Conv.add_factory_callable(
        PARTIAL_CONVTRANS,
        _by_dim(PartialConvTranspose1d, PartialConvTranspose2d, PartialConvTranspose3d),
        "Partial transposed convolution in 1, 2, 3 dims.",
    )
    Norm.add_factory_callable(
        "MASKEDINSTANCE",
        _by_dim(MaskedInstanceNorm1d, MaskedInstanceNorm2d, MaskedInstanceNorm3d),
        "Mask-aware instance norm."
    )
    Norm.add_factory_callable(
        "MASKEDBATCH", _by_dim(MaskedBatchNorm1d, MaskedBatchNorm2d, MaskedBatchNorm3d), "Mask-aware batch norm."
    )
    Norm.add_factory_class("MASKEDGROUP", MaskedGroupNorm, "Mask-aware group norm.")


def masked_norm(norm: tuple | str | None) -> tuple | None:
    """The mask-aware version of a MONAI ``norm`` argument.

    ``"instance"``, ``"batch"`` and ``"group"`` (any case, with or without arguments) become
    ``"maskedinstance"``, ``"maskedbatch"`` and ``"maskedgroup"`` with the same arguments; masked names and
    :class:`MaskedNorm` subclasses pass through; ``None`` and ``""`` (no norm) give ``None``.

    Raises:
        ValueError: for any other norm, whose statistics would count holes (e.g. ``"layer"``).

    Example::

        >>> masked_norm(("instance", {"affine": True}))
        ('MASKEDINSTANCE', {'affine': True})
    """
    if norm is None or norm == "":
        return None
    name, args = split_args(norm)
    if isinstance(name, str) and name.upper() in _MASKED_NORM_NAMES:
        return _MASKED_NORM_NAMES[name.upper()], args
    if isinstance(name, type) and issubclass(name, MaskedNorm) and issubclass(name, nn.Module):
        return name, args
    raise ValueError(
        f"norm {name!r} has no mask-aware version: use 'instance', 'batch' or 'group' (mapped to "
        "'maskedinstance', 'maskedbatch', 'maskedgroup'), one of those names, or a pconv3d MaskedNorm class"
    )


_register()
