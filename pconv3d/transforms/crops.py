"""Crop centres on valid voxels: foreground and background indices of a label within the mask."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_tensor

from pconv3d.transforms._utils import _get_mask, _valid
from pconv3d.transforms.checks import _source, check_volume

__all__ = ["ValidFgBgToIndices", "ValidFgBgToIndicesd"]


class ValidFgBgToIndices(Transform):
    """Flat indices of foreground and background voxels that are valid, for crop-centre sampling.

    Give the result to ``RandCropByPosNegLabeld(fg_indices_key=..., bg_indices_key=...)`` so that patch centres
    fall on valid voxels and training patches are not empty holes (MONAI's ``FgBgToIndices`` restricts only the
    background, by image intensity). Foreground is ``label > 0`` in any channel (background channel 0 of a
    one-hot label is ignored, as in MONAI). If the mask has no valid voxel at all, the indices ignore it (with a
    warning) so that cropping still works.

    Example:
        >>> label = torch.tensor([0.0, 1, 1, 0]).reshape(1, 4, 1, 1)
        >>> fg, bg = ValidFgBgToIndices()(label, torch.tensor([1.0, 1, 0, 0]).reshape(1, 4, 1, 1))
        >>> fg, bg
        (tensor([1]), tensor([0]))
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, label: NdarrayOrTensor, mask: NdarrayOrTensor) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """``(fg_indices, bg_indices)``, 1D int64 on the CPU, of ``label`` ``(C, X, Y, Z)`` within ``mask``."""
        check_volume(label, "label")
        lab = convert_to_tensor(label, track_meta=False, device=torch.device("cpu"))
        if lab.shape[0] > 1:
            lab = lab[1:]
        fg = (lab > 0).any(0).flatten()
        valid = _valid(mask, label).cpu()[0].flatten()
        if not valid.any():
            warnings.warn(f"mask{_source(mask)} has no valid voxel; crop centres ignore it", stacklevel=2)
            valid = torch.ones_like(valid)
        out = (torch.nonzero(fg & valid).flatten(), torch.nonzero(~fg & valid).flatten())
        if isinstance(label, np.ndarray):
            return out[0].numpy(), out[1].numpy()
        return out


class ValidFgBgToIndicesd(MapTransform):
    """Foreground/background indices of label keys restricted to valid voxels, for
    ``RandCropByPosNegLabeld(fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices")``;
    see :class:`ValidFgBgToIndices`.

    Compute them right before the crop (after every transform that changes geometry), and drop the index keys
    after cropping (``DeleteItemsd``): their lengths differ between samples, so they cannot be collated.

    Args:
        keys: label keys; the indices go to ``f"{key}{fg_postfix}"`` and ``f"{key}{bg_postfix}"``.
        mask_key: key of the validity mask.
        fg_postfix: postfix of the foreground-indices key.
        bg_postfix: postfix of the background-indices key.
        allow_missing_keys: skip absent keys.

    Example:
        >>> label = torch.tensor([0.0, 1, 1, 0]).reshape(1, 4, 1, 1)
        >>> mask = torch.tensor([1.0, 1, 0, 0]).reshape(1, 4, 1, 1)
        >>> out = ValidFgBgToIndicesd("label")({"label": label, "mask": mask})
        >>> out["label_fg_indices"], out["label_bg_indices"]
        (tensor([1]), tensor([0]))
    """

    backend = ValidFgBgToIndices.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        fg_postfix: str = "_fg_indices",
        bg_postfix: str = "_bg_indices",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key, self.fg_postfix, self.bg_postfix = mask_key, fg_postfix, bg_postfix
        self.converter = ValidFgBgToIndices()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            fg, bg = self.converter(d[key], _get_mask(d, self.mask_key, key))
            d[f"{key}{self.fg_postfix}"], d[f"{key}{self.bg_postfix}"] = fg, bg
        return d
