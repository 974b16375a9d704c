"""Partial-convolution blocks for MONAI networks: every block takes and returns ``(x, mask)``.

A mask may be a tensor or a :class:`~pconv3d.masks.carrier.Mask` carrier; a block returns its mask the way it was
given (networks pass one carrier through the whole call). Blocks call their partial convolutions as
modules, so forward hooks fire on every one of them.

Importing this package registers the partial layers in MONAI's factories (see
:mod:`pconv3d.blocks.factories`): ``Conv["partialconv"]``, ``Conv["partialconvtrans"]``,
``Norm["maskedinstance"]``, ``Norm["maskedbatch"]``, ``Norm["maskedgroup"]``.
"""

from pconv3d.blocks.factories import PARTIAL_CONV, PARTIAL_CONVTRANS, masked_norm  # registers first
from pconv3d.blocks.conv_transpose import PartialConvTranspose1d, PartialConvTranspose2d, PartialConvTranspose3d
from pconv3d.blocks.convolution import PartialADN, PartialConvolution
from pconv3d.blocks.dynunet_block import (
    PartialUnetBasicBlock,
    PartialUnetOutBlock,
    PartialUnetResBlock,
    PartialUnetUpBlock,
)
from pconv3d.blocks.gated import GATE_BIAS, Gated, GatedConvolution, GatedResidualUnit, conv_together, gate_for
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
from pconv3d.blocks.residual import PartialIdentity, PartialResidualUnit
from pconv3d.blocks.segresnet_block import PartialNormActConv, PartialResBlock
from pconv3d.blocks.sampling import NormalizedFilter, PartialMaxPool, PartialSubpixelUpsample, PartialUpSample
from pconv3d.blocks.skip import PartialSequential, PartialSkipConnection
from pconv3d.masks.carrier import any_channel, mask_union

__all__ = [
    "PARTIAL_CONV",
    "PARTIAL_CONVTRANS",
    "masked_norm",
    "MaskedNorm",
    "MaskedInstanceNorm1d",
    "MaskedInstanceNorm2d",
    "MaskedInstanceNorm3d",
    "MaskedBatchNorm1d",
    "MaskedBatchNorm2d",
    "MaskedBatchNorm3d",
    "MaskedGroupNorm",
    "PartialConvTranspose1d",
    "PartialConvTranspose2d",
    "PartialConvTranspose3d",
    "PartialADN",
    "PartialConvolution",
    "PartialIdentity",
    "PartialResidualUnit",
    "PartialSequential",
    "PartialSkipConnection",
    "any_channel",
    "mask_union",
    "PartialMaxPool",
    "NormalizedFilter",
    "PartialSubpixelUpsample",
    "PartialUpSample",
    "PartialUnetBasicBlock",
    "PartialUnetResBlock",
    "PartialUnetUpBlock",
    "PartialUnetOutBlock",
    "GATE_BIAS",
    "Gated",
    "GatedConvolution",
    "GatedResidualUnit",
    "conv_together",
    "gate_for",
    "PartialResBlock",
    "PartialNormActConv",
]
