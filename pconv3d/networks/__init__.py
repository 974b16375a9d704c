"""Partial-convolution versions of MONAI segmentation networks, and conversion of existing ones.

Importing this package imports :mod:`pconv3d.blocks`, which registers the partial layers in MONAI's
factories.
"""

from pconv3d.networks.basic_unet import PartialBasicUNet
from pconv3d.networks.convert import to_partial
from pconv3d.networks.dynunet import PartialDynUNet
from pconv3d.networks.gated_unet import GatedUNet
from pconv3d.networks.segresnet import PartialSegResNet
from pconv3d.networks.unet import PartialUNet

__all__ = ["GatedUNet", "PartialSegResNet", "PartialUNet", "PartialBasicUNet", "PartialDynUNet", "to_partial"]
