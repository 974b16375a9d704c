"""``to_partial``: partial-convolution-based padding for an existing network."""

import torch.nn as nn

from pconv3d.partial_conv import PartialConv1d, PartialConv2d, PartialConv3d

__all__ = ["to_partial"]

_PARTIAL = {nn.Conv1d: PartialConv1d, nn.Conv2d: PartialConv2d, nn.Conv3d: PartialConv3d}


def _partial_copy(conv: nn.Module) -> nn.Module:
    partial = _PARTIAL[type(conv)](
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        device="meta",  # nothing to initialize: the parameters are taken over below
    )
    # the very same Parameter objects: optimizers, weight ties and shared modules keep working
    partial.weight = conv.weight
    partial.bias = conv.bias
    partial.train(conv.training)
    return partial


def to_partial(model: nn.Module) -> nn.Module:
    """Turn every ``nn.Conv1d/2d/3d`` of ``model`` into the matching :class:`pconv3d.PartialConv3d` (...)
    in padding mode, in place, keeping its parameters; returns ``model`` (or the new layer if ``model``
    is itself a convolution).

    This is partial-convolution-based padding (Liu et al., TPAMI 2022): zero padding is treated as missing
    data, so border outputs are renormalized over the in-image part of each window while interior outputs
    are unchanged. It works on any network whose convolutions are plain ``nn.ConvNd`` modules (MONAI
    ``UNet``, ``BasicUNet``, ``DynUNet``, ``SegResNet``, ...), keeps ``state_dict`` keys, and the result
    still scripts, traces and exports.

    What it cannot do: take a mask of missing voxels. The network's own ``forward`` passes single tensors,
    so inside the image every voxel counts as valid, and norms, pooling (the pad-pool of pixel-shuffle
    upsampling too), interpolation and transposed convolutions are left as they are. For missing data use
    :class:`~pconv3d.networks.PartialUNet`, :class:`~pconv3d.networks.PartialBasicUNet`,
    :class:`~pconv3d.networks.PartialDynUNet` or :class:`~pconv3d.networks.PartialSegResNet`, which take
    the same arguments (what they refuse, and why: :mod:`pconv3d.networks`) and load the same weights.
    Subclasses of ``nn.ConvNd`` are left alone, and other padding modes than ``"zeros"`` give the same
    result as before (their padded voxels are valid).

    Example::

        >>> net = to_partial(monai.networks.nets.SegResNet(spatial_dims=3, init_filters=8))
        >>> y = net(torch.randn(1, 1, 32, 32, 32))
    """
    if type(model) in _PARTIAL:
        return _partial_copy(model)
    converted: dict[int, nn.Module] = {}  # a module registered twice (DynUNet's skip layers) stays shared
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in _PARTIAL:
                if id(child) not in converted:
                    converted[id(child)] = _partial_copy(child)
                setattr(parent, name, converted[id(child)])
    return model
