"""MONAI transforms for volumes with missing data, one module per topic, each array transform beside its
dictionary version (which only routes keys):

* :mod:`~pconv3d.transforms.checks`: input checks (volume shape, one grid, mask values);
* :mod:`~pconv3d.transforms.masks`: deriving validity masks and adding holes to them;
* :mod:`~pconv3d.transforms.filling`: filling holes (a value, slice interpolation, everywhere with a confidence);
* :mod:`~pconv3d.transforms.intensity`: normalization with statistics of the valid voxels only;
* :mod:`~pconv3d.transforms.holes`: simulated missing data (dropped slices, masked regions);
* :mod:`~pconv3d.transforms.crops`: crop centres on valid voxels;
* :mod:`~pconv3d.transforms.labels`: one-hot labels with unannotated voxels left out;
* :mod:`~pconv3d.transforms.input_recipe` and :mod:`~pconv3d.transforms.recipes`: what the network is given,
  and the chains of these transforms with MONAI's own.

Conventions: an image is channel-first ``(C, X, Y, Z)``, as after MONAI's ``EnsureChannelFirst``; a validity
mask is ``(1, X, Y, Z)`` on the image's grid, under ``mask_key`` (default ``"mask"``) in a dictionary, with the
meaning of valid of :mod:`pconv3d.masks.carrier`: bool/integer masks are nonzero = valid, floating masks are weights in
[0, 1] (0 = missing, 1 = valid), and a floating mask with values outside [0, 1] or NaN is refused with a
``ValueError``. Masks made here are float32, floating weights pass through unchanged (a new hole sets a weight
to 0), and when the image is a ``MetaTensor`` the mask is one too, with a copy of the image's metadata. After
any transform here the holes (weight 0) of an image are exact zeros (never NaN). Transforms that produce an
image and a mask return ``(image, mask)``; dictionary transforms that simulate missing data make one draw per
sample and apply it to every key in ``keys`` (images, zero-filled) and to the mask; labels are not listed in
``keys`` and stay untouched.
"""

from pconv3d.transforms.checks import CheckGridd, check_mask_values, check_same_grid, check_volume, grid_mismatch
from pconv3d.transforms.crops import ValidFgBgToIndices, ValidFgBgToIndicesd
from pconv3d.transforms.filling import (
    FillHoles,
    FillHolesd,
    InterpolateMissing,
    InterpolateMissingd,
    InterpolateSlices,
    InterpolateSlicesd,
    hole_distance,
    hole_reach,
    missing_slice_axes,
)
from pconv3d.transforms.holes import (
    REGION_SHAPES,
    SLICE_PATTERNS,
    DropSlices,
    DropSlicesd,
    MaskRegions,
    MaskRegionsd,
    RandDropSlices,
    RandDropSlicesd,
    RandMaskRegions,
    RandMaskRegionsd,
    drop_slice_pattern,
)
from pconv3d.transforms.input_recipe import FILL_MODES, RECIPES, InputRecipe, PrepareBatchViews
from pconv3d.transforms.intensity import (
    MaskedNormalizeIntensity,
    MaskedNormalizeIntensityd,
    MaskedScaleIntensityRangePercentiles,
    MaskedScaleIntensityRangePercentilesd,
)
from pconv3d.transforms.labels import AsDiscrete, AsDiscreted, OneHotAnnotated, OneHotAnnotatedd
from pconv3d.transforms.masks import DeriveMask, DeriveMaskd, combine_mask
from pconv3d.transforms.recipes import IMAGE, LABEL, MASK, PRED, infer_transforms, invert_transforms, train_transforms

__all__ = [
    "FILL_MODES",
    "RECIPES",
    "InputRecipe",
    "PrepareBatchViews",
    "REGION_SHAPES",
    "SLICE_PATTERNS",
    "IMAGE",
    "MASK",
    "LABEL",
    "PRED",
    "CheckGridd",
    "DeriveMask",
    "DeriveMaskd",
    "DropSlices",
    "DropSlicesd",
    "FillHoles",
    "FillHolesd",
    "InterpolateMissing",
    "InterpolateMissingd",
    "InterpolateSlices",
    "InterpolateSlicesd",
    "MaskRegions",
    "MaskRegionsd",
    "MaskedNormalizeIntensity",
    "MaskedNormalizeIntensityd",
    "MaskedScaleIntensityRangePercentiles",
    "MaskedScaleIntensityRangePercentilesd",
    "AsDiscrete",
    "AsDiscreted",
    "OneHotAnnotated",
    "OneHotAnnotatedd",
    "RandDropSlices",
    "RandDropSlicesd",
    "RandMaskRegions",
    "RandMaskRegionsd",
    "ValidFgBgToIndices",
    "ValidFgBgToIndicesd",
    "check_mask_values",
    "check_same_grid",
    "check_volume",
    "combine_mask",
    "drop_slice_pattern",
    "grid_mismatch",
    "hole_distance",
    "hole_reach",
    "missing_slice_axes",
    "infer_transforms",
    "invert_transforms",
    "train_transforms",
]
