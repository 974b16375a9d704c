"""Transform recipes: from files on disk to aligned ``(image, mask, label)`` tensors, and back.

Keys: ``image`` (channel-first float32), ``mask`` (validity mask ``(1, X, Y, Z)`` float32, 1 = valid),
``label`` (channel-first, integer values stored as float32), ``pred`` (network output to invert). A ``mask``
file in the datalist is optional; ``label`` is optional for inference.

Order, and why:

1. load, channel first, check that image/label/mask share one grid;
2. derive the mask (NaN/inf, fill value, missing slices, mask file) and zero the holes, *before any
   resampling*, because interpolation smears NaN and fill values into valid voxels;
3. orientation and spacing: bilinear for the image, nearest for mask and label, zero padding for all three
   (outside the field of view is missing), then zero the image's holes again (bilinear blurs into them);
4. simulated missing data (training, or evaluation at an exact fraction), so that normalization only sees
   what a real scan with those holes would show; for consistency training a copy of the image and mask
   without them goes on beside them (``complete_view``), through the same draws of the steps below;
5. masked normalization (statistics of valid voxels only);
6. training only: pad to the patch size, crop around valid voxels (``ValidFgBgToIndicesd`` +
   ``RandCropByPosNegLabeld``), random affine and flips on all three keys, intensity augmentation on the
   image, and a last zeroing of the image's holes;
7. what the network is given (:class:`~pconv3d.transforms.InputRecipe`): holes filled or at 0, the mask as a
   channel or not.

Geometric transforms are MONAI's invertible ones, so ``invert_transforms(infer_transforms(...))`` maps a
prediction back onto the original image grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from monai.data import ImageReader
from monai.transforms import (
    Compose,
    CopyItemsd,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    Invertd,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    Spacingd,
    SpatialPadd,
)

from pconv3d.io.sitk import NON_NIFTI_SUFFIXES, SimpleITKReader
from pconv3d.transforms.checks import CheckGridd
from pconv3d.transforms.crops import ValidFgBgToIndicesd
from pconv3d.transforms.filling import FillHolesd
from pconv3d.transforms.holes import DropSlicesd, MaskRegionsd, RandDropSlicesd, RandMaskRegionsd
from pconv3d.transforms.input_recipe import COMPLETE_KEYS, InputRecipe
from pconv3d.transforms.intensity import MaskedNormalizeIntensityd, MaskedScaleIntensityRangePercentilesd
from pconv3d.transforms.masks import DeriveMaskd

__all__ = [
    "IMAGE",
    "MASK",
    "LABEL",
    "PRED",
    "KEYS",
    "DEFAULT_DROP_SLICES",
    "DEFAULT_MASK_REGIONS",
    "DEFAULT_AFFINE",
    "load_transforms",
    "train_transforms",
    "infer_transforms",
    "invert_transforms",
]

IMAGE, MASK, LABEL, PRED = "image", "mask", "label", "pred"
KEYS = (IMAGE, MASK, LABEL)
# interpolation per key of KEYS: the mask and the label must never be blended
_MODES = ("bilinear", "nearest", "nearest")

DEFAULT_DROP_SLICES = MappingProxyType({"prob": 0.5, "axes": (2,), "fraction": (0.1, 0.5)})
DEFAULT_MASK_REGIONS = MappingProxyType({"prob": 0.3, "num_regions": (1, 3), "size": (0.1, 0.35)})
DEFAULT_AFFINE = MappingProxyType({"prob": 0.3, "rotate_range": (0.2, 0.2, 0.2), "scale_range": (0.1, 0.1, 0.1)})


def _load(reader: ImageReader | str | None, mask_options: Mapping[str, Any] | None) -> list[MapTransform]:
    """Steps 1-2: load, channel first, grid check, mask derivation (before any resampling)."""
    load = LoadImaged((IMAGE, LABEL), reader=reader, image_only=True, allow_missing_keys=True)
    # a mask keeps its dtype: an integer mask file (0/255 too) is valid wherever nonzero (see pconv3d.masks.carrier)
    load_mask = LoadImaged(MASK, reader=reader, image_only=True, allow_missing_keys=True, dtype=None)
    if reader is None:
        # NIfTI stays with MONAI's NibabelReader; MetaImage and NRRD go to SimpleITK (MONAI's ITKReader needs itk)
        for loader in (load, load_mask):
            loader.register(SimpleITKReader(suffixes=NON_NIFTI_SUFFIXES))
    return [
        load,
        load_mask,
        EnsureChannelFirstd(KEYS, allow_missing_keys=True),
        CheckGridd([MASK, LABEL], ref_key=IMAGE, allow_missing_keys=True),
        DeriveMaskd(IMAGE, mask_key=MASK, **dict(mask_options or {})),
    ]


def _geometry(pixdim: Sequence[float] | float | None, axcodes: str | None) -> list[MapTransform]:
    """Step 3: orientation and spacing with per-key interpolation and zero padding, then re-zero the holes."""
    steps: list[MapTransform] = []
    if axcodes is not None:
        # labels=None: axis labels from the MetaTensor's space (RAS for our readers), MONAI's coming default
        steps.append(Orientationd(KEYS, axcodes=axcodes, labels=None, allow_missing_keys=True))
    if pixdim is not None:
        steps.append(Spacingd(KEYS, pixdim=pixdim, mode=_MODES, padding_mode="zeros", allow_missing_keys=True))
    return [*steps, FillHolesd(IMAGE, mask_key=MASK)]


def _normalize(normalize: str | None, image_key: str = IMAGE, mask_key: str = MASK) -> list[MapTransform]:
    """Step 5: masked z-score (``"zscore"``), percentile scaling (``"percentile"``) or none (``None``)."""
    if normalize is None:
        return []
    if normalize == "zscore":
        return [MaskedNormalizeIntensityd(image_key, mask_key=mask_key)]
    if normalize == "percentile":
        return [MaskedScaleIntensityRangePercentilesd(image_key, mask_key=mask_key, lower=0.5, upper=99.5)]
    raise ValueError(f"normalize must be 'zscore', 'percentile' or None, got {normalize!r}")


def _network_input(
    recipe: InputRecipe | str | Mapping[str, Any] | None, image_key: str = IMAGE, mask_key: str = MASK
) -> list[MapTransform]:
    """Last steps: what the network is given in place of the holes (after normalization, which leaves them 0)."""
    return InputRecipe.of(recipe).transforms(image_key, mask_key) if recipe is not None else []


def load_transforms(reader: ImageReader | str | None = None, mask_options: Mapping[str, Any] | None = None) -> Compose:
    """Steps 1-2 alone: load, channel first, grid check and mask derivation, on each file's own grid; what
    checks of a dataset read before training or inference start.

    Args:
        reader: image reader for ``LoadImaged``; ``None``: NibabelReader for NIfTI, SimpleITK for the rest.
        mask_options: arguments of :class:`~pconv3d.transforms.DeriveMaskd`.

    Example:
        >>> d = load_transforms()({"image": "img.nii.gz", "label": "seg.nii.gz"})  # doctest: +SKIP
        >>> d["image"].shape, d["mask"].shape  # doctest: +SKIP
        (torch.Size([1, 48, 48, 48]), torch.Size([1, 48, 48, 48]))
    """
    return Compose(_load(reader, mask_options))


def train_transforms(
    patch_size: Sequence[int] = (32, 32, 32),
    num_samples: int = 2,
    pos: float = 1.0,
    neg: float = 1.0,
    pixdim: Sequence[float] | float | None = None,
    axcodes: str | None = "RAS",
    drop_slices: Mapping[str, Any] | None = DEFAULT_DROP_SLICES,
    mask_regions: Mapping[str, Any] | None = DEFAULT_MASK_REGIONS,
    affine: Mapping[str, Any] | None = DEFAULT_AFFINE,
    flips: bool = True,
    intensity: bool = True,
    normalize: str | None = "zscore",
    reader: ImageReader | str | None = None,
    mask_options: Mapping[str, Any] | None = None,
    recipe: InputRecipe | str | Mapping[str, Any] | None = None,
    complete_view: bool = False,
) -> Compose:
    """Training transforms for datalist entries ``{"image": path, "label": path, "mask": path?}``.

    Each entry yields ``num_samples`` patches ``{"image", "mask", "label"}`` of ``patch_size``, all float32
    ``MetaTensor`` on one grid, centred on valid voxels (foreground with probability ``pos / (pos + neg)``).

    Args:
        patch_size: patch size; smaller volumes are zero-padded (padding is missing in the mask).
        num_samples: patches per volume.
        pos: weight of foreground-centred patches.
        neg: weight of background-centred patches.
        pixdim: target voxel spacing in mm (``Spacingd``); ``None`` keeps each file's grid.
        axcodes: target orientation (``Orientationd``); ``None`` keeps each file's.
        drop_slices: arguments of :class:`~pconv3d.transforms.RandDropSlicesd` (``prob``, ``axes``,
            ``fraction``, ``patterns``), or ``None`` for no simulated slice dropping.
        mask_regions: arguments of :class:`~pconv3d.transforms.RandMaskRegionsd`, or ``None``.
        affine: arguments of MONAI's ``RandAffined`` (``prob``, ``rotate_range``, ``scale_range``, ...), or
            ``None``; interpolation and padding are fixed per key.
        flips: random flips along each spatial axis (probability 0.5 each).
        intensity: random intensity scaling and Gaussian noise on the image (holes stay 0).
        normalize: ``"zscore"``, ``"percentile"`` or ``None``.
        reader: image reader for ``LoadImaged``; ``None``: NibabelReader for NIfTI, SimpleITK for the rest.
        mask_options: arguments of :class:`~pconv3d.transforms.DeriveMaskd` (``fill_value``, ``slice_axes``,
            ``missing_slices_key``, ...).
        recipe: what the network is given (:class:`~pconv3d.transforms.InputRecipe`, by name or record);
            ``None``: the image with its holes at 0, the mask beside it.
        complete_view: also give each patch without its simulated holes, as ``image_complete`` and
            ``mask_complete`` (``input_recipe.COMPLETE_KEYS``): copied before the
            holes are simulated, normalized by its own mask, then cropped, deformed, flipped and rescaled with
            the same draws as ``image`` and ``mask`` (each MONAI dictionary transform draws once for all its
            keys) and given to the network the same way; without simulated holes the two views are equal.
            For consistency training (:class:`~pconv3d.losses.ConsistencyLoss`). Crops centre on voxels
            valid in the holed view.

    Example:
        >>> from monai.data import DataLoader, Dataset
        >>> from pconv3d.io.datalist import load_datalist
        >>> datalist = load_datalist("data/dataset.json", "training")  # doctest: +SKIP
        >>> ds = Dataset(datalist, train_transforms(patch_size=(32, 32, 32)))  # doctest: +SKIP
        >>> batch = next(iter(DataLoader(ds, batch_size=2)))  # doctest: +SKIP
        >>> batch["image"].shape, batch["mask"].shape, batch["label"].shape  # doctest: +SKIP
        (torch.Size([4, 1, 32, 32, 32]), torch.Size([4, 1, 32, 32, 32]), torch.Size([4, 1, 32, 32, 32]))
    """
    views = [(IMAGE, MASK), COMPLETE_KEYS] if complete_view else [(IMAGE, MASK)]
    keys = [*KEYS, *COMPLETE_KEYS] if complete_view else list(KEYS)
    modes = [*_MODES, *_MODES[:2]] if complete_view else list(_MODES)  # the complete view's image, then mask
    steps = [*_load(reader, mask_options), *_geometry(pixdim, axcodes)]
    if complete_view:
        steps.append(CopyItemsd([IMAGE, MASK], names=list(COMPLETE_KEYS)))
    if drop_slices is not None:
        steps.append(RandDropSlicesd(IMAGE, mask_key=MASK, **dict(drop_slices)))
    if mask_regions is not None:
        steps.append(RandMaskRegionsd(IMAGE, mask_key=MASK, **dict(mask_regions)))
    steps += [step for image, mask in views for step in _normalize(normalize, image, mask)]
    fg, bg = f"{LABEL}_fg_indices", f"{LABEL}_bg_indices"
    steps += [
        SpatialPadd(keys, spatial_size=patch_size),
        ValidFgBgToIndicesd(LABEL, mask_key=MASK),
        RandCropByPosNegLabeld(
            keys,
            label_key=LABEL,
            spatial_size=patch_size,
            pos=pos,
            neg=neg,
            num_samples=num_samples,
            fg_indices_key=fg,
            bg_indices_key=bg,
        ),
        DeleteItemsd([fg, bg]),  # index lists differ in length between samples and cannot be collated
    ]
    if affine is not None:
        steps.append(RandAffined(keys, mode=modes, padding_mode="zeros", **dict(affine)))
    if flips:
        steps += [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)]
    if intensity:
        images = [image for image, _ in views]
        steps += [RandScaleIntensityd(images, factors=0.1, prob=0.5), RandGaussianNoised(images, prob=0.2, std=0.05)]
    for image, mask in views:
        steps += [FillHolesd(image, mask_key=mask), *_network_input(recipe, image, mask)]
    return Compose([*steps, EnsureTyped(keys, dtype=torch.float32)])


def infer_transforms(
    pixdim: Sequence[float] | float | None = None,
    axcodes: str | None = "RAS",
    drop_slices: Mapping[str, Any] | None = None,
    mask_regions: Mapping[str, Any] | None = None,
    normalize: str | None = "zscore",
    reader: ImageReader | str | None = None,
    mask_options: Mapping[str, Any] | None = None,
    recipe: InputRecipe | str | Mapping[str, Any] | None = None,
) -> Compose:
    """Inference and evaluation transforms for entries ``{"image": path, "label": path?, "mask": path?}``.

    Whole volumes (use sliding-window inference), keys ``image``, ``mask`` and ``label`` when given. With
    ``drop_slices`` the volume loses exactly that fraction of slices, with ``mask_regions`` at least that fraction
    of its voxels in boxes, reproducibly per case (evaluation at 25, 50, 75 % missing); the label is untouched.
    Invert predictions with :func:`invert_transforms`.

    Args:
        pixdim: target voxel spacing in mm, or ``None`` to keep each file's grid.
        axcodes: target orientation, or ``None``.
        drop_slices: arguments of :class:`~pconv3d.transforms.DropSlicesd` (``fraction``, ``pattern``,
            ``axis``, ``seed``), or ``None``.
        mask_regions: arguments of :class:`~pconv3d.transforms.MaskRegionsd` (``fraction``, ``size``,
            ``seed``), or ``None``.
        normalize: ``"zscore"``, ``"percentile"`` or ``None``.
        reader: image reader for ``LoadImaged``; ``None``: NibabelReader for NIfTI, SimpleITK for the rest.
        mask_options: arguments of :class:`~pconv3d.transforms.DeriveMaskd`.
        recipe: what the network is given (:class:`~pconv3d.transforms.InputRecipe`, by name or record);
            ``None``: the image with its holes at 0, the mask beside it.

    Example:
        >>> tf = infer_transforms(drop_slices={"fraction": 0.5, "pattern": "regular"})
        >>> d = tf({"image": "imagesTs/mni_008.nii.gz", "label": "labelsTs/mni_008.nii.gz"})  # doctest: +SKIP
        >>> float(d["mask"].mean())  # doctest: +SKIP
        0.5
    """
    steps = [*_load(reader, mask_options), *_geometry(pixdim, axcodes)]
    if drop_slices is not None:
        steps.append(DropSlicesd(IMAGE, mask_key=MASK, **dict(drop_slices)))
    if mask_regions is not None:
        steps.append(MaskRegionsd(IMAGE, mask_key=MASK, **dict(mask_regions)))
    steps += [*_normalize(normalize), *_network_input(recipe), EnsureTyped(KEYS, dtype=torch.float32, allow_missing_keys=True)]
    return Compose(steps)


def invert_transforms(
    transform: Compose, keys: Sequence[str] | str = PRED, nearest_interp: bool = True, device: str | None = "cpu"
) -> Invertd:
    """``Invertd`` that maps ``keys`` (predictions on the grid of ``transform``'s output) back onto the grid
    of the original image file, using the operations recorded on ``image``.

    Args:
        transform: the :func:`infer_transforms` instance the inputs went through.
        keys: keys to invert. Default ``"pred"``.
        nearest_interp: nearest interpolation (for labels); ``False`` for probabilities.
        device: device of the inverted tensors.

    Example:
        >>> tf = infer_transforms(pixdim=(2.0, 2.0, 2.0))
        >>> d = tf({"image": "img.nii.gz"})  # doctest: +SKIP
        >>> d["pred"] = model_output  # doctest: +SKIP
        >>> invert_transforms(tf)(d)["pred"].shape  # the original file's shape  # doctest: +SKIP
    """
    return Invertd(keys, transform=transform, orig_keys=IMAGE, nearest_interp=nearest_interp, device=device)
