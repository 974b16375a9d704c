"""Partial-convolution versions of MONAI segmentation networks, and conversion of existing ones.

Two roads to a partial network: the ``Partial*`` classes, drop-ins for MONAI's ``UNet``, ``BasicUNet``,
``DynUNet`` and ``SegResNet`` that take a mask, and :func:`to_partial`, which makes the convolutions of a
network you already have partial (no mask: partial padding only). Both take every MONAI argument that has
a meaning with a mask; this is the list of what the first refuses.

What the ``Partial*`` classes accept: every argument of their MONAI twin, with the same ``state_dict``
keys, every upsampling mode included (``"deconv"``, ``"deconvgroup"``, ``"nontrainable"``,
``"pixelshuffle"``; see :class:`~pconv3d.blocks.PartialUpSample`). The one thing refused, with a
``ValueError`` that says why, before any layer is built: a norm without a mask-aware version (anything
but ``"instance"``, ``"batch"``, ``"group"``, their masked names and :class:`~pconv3d.blocks.MaskedNorm`
classes; see :func:`~pconv3d.blocks.masked_norm`): its statistics would count the holes. :func:`to_partial`
takes such networks too, as it takes no mask: it leaves norms as they are. Blocks used on their own refuse
custom ``pre_conv``/``post_conv``/``conv_block`` modules as well, whose mask rule is unknown.

Where the roads differ, given no mask: a ``Partial*`` network treats every zero padding as missing, the
pad-pool of ``"pixelshuffle"`` upsampling included; :func:`to_partial` changes convolutions only.

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
