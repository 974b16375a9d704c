"""Input checks: channel-first 3D volumes, one grid (shape and affine) for image, label and mask, mask values."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ImageMetaKey, TransformBackends, convert_to_tensor

__all__ = ["grid_mismatch", "check_volume", "check_same_grid", "check_mask_values", "CheckGridd"]

_AFFINE_ATOL = 1e-3  # mm; NIfTI stores affines in float32


def _source(x: NdarrayOrTensor) -> str:
    """`` 'file.nii.gz'`` when ``x`` remembers the file it came from, else ``""`` (for error messages)."""
    name = x.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(x, MetaTensor) else None
    return f" '{name}'" if isinstance(name, (str, os.PathLike)) and str(name) else ""


def grid_mismatch(
    shape: Sequence[int],
    affine: np.ndarray,
    ref_shape: Sequence[int],
    ref_affine: np.ndarray,
    atol: float = _AFFINE_ATOL,
) -> str | None:
    """Describe how a spatial grid differs from a reference grid, or ``None`` when they agree.

    Args:
        shape: spatial shape.
        affine: 4x4 affine.
        ref_shape: reference spatial shape.
        ref_affine: reference 4x4 affine.
        atol: tolerance on affine entries (mm).

    Example:
        >>> grid_mismatch((4, 4, 4), np.eye(4), (4, 4, 5), np.eye(4))
        'shape (4, 4, 4) differs from (4, 4, 5)'
    """
    shape, ref_shape = tuple(int(s) for s in shape), tuple(int(s) for s in ref_shape)
    if shape != ref_shape:
        return f"shape {shape} differs from {ref_shape}"
    affine, ref_affine = np.asarray(affine, dtype=np.float64), np.asarray(ref_affine, dtype=np.float64)
    if not np.allclose(affine, ref_affine, atol=atol, rtol=0):
        diff = float(np.abs(affine - ref_affine).max())
        return (
            f"affine differs by up to {diff:.4g} mm: {np.round(affine[:3], 4).tolist()} "
            f"vs {np.round(ref_affine[:3], 4).tolist()}"
        )
    return None


def check_volume(x: NdarrayOrTensor, name: str = "image") -> None:
    """Raise ``ValueError`` unless ``x`` is a channel-first 3D volume ``(C, X, Y, Z)``.

    Args:
        x: the array.
        name: what to call it in the message (a key name, say).

    Example:
        >>> check_volume(torch.zeros(1, 8, 8))
        Traceback (most recent call last):
        ValueError: image: expected a channel-first 3D volume (C, X, Y, Z), got shape (1, 8, 8)
    """
    if x.ndim != 4:
        raise ValueError(
            f"{name}{_source(x)}: expected a channel-first 3D volume (C, X, Y, Z), got shape {tuple(x.shape)}"
        )


def check_same_grid(x: NdarrayOrTensor, ref: NdarrayOrTensor, name: str = "mask", ref_name: str = "image") -> None:
    """Raise ``ValueError`` unless ``x`` and ``ref`` have the same spatial shape (and affine, for MetaTensors).

    Args:
        x: the array to check, channel-first.
        ref: the reference array, channel-first.
        name: what to call ``x`` in the message.
        ref_name: what to call ``ref`` in the message.

    Example:
        >>> check_same_grid(torch.zeros(1, 8, 8, 8), torch.zeros(1, 8, 8, 9), "label")
        Traceback (most recent call last):
        ValueError: label does not match image: shape (8, 8, 8) differs from (8, 8, 9)
    """
    both_meta = isinstance(x, MetaTensor) and isinstance(ref, MetaTensor)
    affine, ref_affine = (np.asarray(x.affine), np.asarray(ref.affine)) if both_meta else (np.eye(4), np.eye(4))
    problem = grid_mismatch(x.shape[1:], affine, ref.shape[1:], ref_affine)
    if problem:
        raise ValueError(f"{name}{_source(x)} does not match {ref_name}{_source(ref)}: {problem}")


def check_mask_values(mask: NdarrayOrTensor, name: str = "mask") -> None:
    """Raise ``ValueError`` unless ``mask`` is bool/integer or holds weights in [0, 1] (no NaN).

    Args:
        mask: the mask.
        name: what to call it in the message (its key).

    Example:
        >>> check_mask_values(torch.tensor([0.0, 1.0, 255.0]), "'mask'")
        Traceback (most recent call last):
        ValueError: 'mask': a floating validity mask holds weights in [0, 1], found 255.0 (store binary masks as bool or integer, or rescale)
    """
    m = convert_to_tensor(mask, track_meta=False)
    if not m.is_floating_point() or m.numel() == 0:
        return
    low, high = torch.aminmax(m)  # one pass; a NaN makes both NaN, and so fails the test below
    if not (low >= 0 and high <= 1):
        bad = m[torch.isnan(m) | (m < 0) | (m > 1)]
        raise ValueError(
            f"{name}{_source(mask)}: a floating validity mask holds weights in [0, 1], found {bad[0].item()} "
            "(store binary masks as bool or integer, or rescale)"
        )


class CheckGridd(MapTransform):
    """Check that every key holds a channel-first 3D volume on the grid (shape, affine) of ``ref_key``.

    Put it right after ``LoadImaged``/``EnsureChannelFirstd`` so that an image, label and mask that disagree
    fail with a message naming the keys, the files and what differs, instead of deep inside a later transform.

    Args:
        keys: keys to check (``ref_key`` may be among them).
        ref_key: the reference key. Default ``"image"``.
        allow_missing_keys: skip absent keys.

    Example:
        >>> CheckGridd(["image", "label"])({"image": torch.zeros(1, 4, 4, 4), "label": torch.zeros(1, 4, 4, 5)})
        Traceback (most recent call last):
        ValueError: 'label' does not match 'image': shape (4, 4, 5) differs from (4, 4, 4)
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, keys: KeysCollection, ref_key: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        ref = d[self.ref_key]
        check_volume(ref, f"'{self.ref_key}'")
        for key in self.key_iterator(d):
            check_volume(d[key], f"'{key}'")
            check_same_grid(d[key], ref, f"'{key}'", f"'{self.ref_key}'")
        return d
