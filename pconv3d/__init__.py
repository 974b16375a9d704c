"""pconv3d: exact, stateless partial convolutions and MONAI tools for 3D segmentation with missing data."""

from pconv3d.masks.carrier import Mask
from pconv3d.partial_conv import PartialConv1d, PartialConv2d, PartialConv3d

__version__ = "0.1.0"
__all__ = ["Mask", "PartialConv1d", "PartialConv2d", "PartialConv3d", "__version__"]
