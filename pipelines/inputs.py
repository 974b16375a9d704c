"""Checks of the input data, run before any long work: every case of a training or inference datalist is
read once and must be a usable volume for the configured network.

A case fails with a ``ValueError`` naming its file and the value expected and found when its files are
missing, unreadable, not 3D or not on one grid (:func:`pconv3d.io.datalist.validate_case`), when its image
has another number of channels than the network takes, when no voxel of it is valid (all NaN, or masked
out), or when its label holds values that are not class indices.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from pconv3d.io.datalist import validate_case
from pconv3d.transforms.recipes import IMAGE, LABEL, MASK, load_transforms


def check_label_values(label: Any, path: str, num_classes: int, ignore_index: int | None = None) -> None:
    """Raise a ``ValueError`` unless ``label`` holds only whole numbers in ``0 .. num_classes - 1`` (and
    ``ignore_index``, unannotated voxels, when given)."""
    values = torch.unique(torch.as_tensor(np.asarray(label)).flatten())
    allowed = f"0..{num_classes - 1}" + (f" (or {ignore_index}, unannotated)" if ignore_index is not None else "")
    fractional = values[(values != torch.round(values)) | ~torch.isfinite(values)] if values.is_floating_point() else values[:0]
    if len(fractional):
        raise ValueError(f"{path}: label values must be whole class indices {allowed}; found {fractional[0].item():g}")
    outside = values[((values < 0) | (values >= num_classes)) & (values != (ignore_index if ignore_index is not None else -1))]
    if len(outside):
        raise ValueError(f"{path}: label value {outside[0].item():g} is not a class index {allowed} "
                         f"(num_classes is {num_classes})")


def check_cases(
    datalist: Iterable[Mapping[str, Any]],
    in_channels: int,
    num_classes: int | None = None,
    ignore_index: int | None = None,
    mask_options: Mapping[str, Any] | None = None,
) -> None:
    """Check every case of ``datalist`` for a network with ``in_channels`` input channels (see the module doc).

    Args:
        datalist: entries ``{"image", "label"?, "mask"?}``.
        in_channels: channels the network takes.
        num_classes: with labels: class indices are ``0 .. num_classes - 1``.
        ignore_index: a label value that marks unannotated voxels.
        mask_options: how the mask is derived (arguments of :class:`~pconv3d.transforms.DeriveMaskd`).
    """
    load = load_transforms(mask_options=mask_options)
    for item in datalist:
        validate_case(item)
        d = load(dict(item))
        image = item[IMAGE]
        if d[IMAGE].shape[0] != in_channels:
            raise ValueError(f"{image}: the image has {d[IMAGE].shape[0]} channel(s), the network takes {in_channels}")
        if not bool(d[MASK].any()):
            masked = f" or masked out by {item[MASK]}" if item.get(MASK) else ""
            raise ValueError(f"{image}: no valid voxel (every voxel is NaN/inf{masked}); nothing to segment")
        if num_classes is not None and item.get(LABEL) is not None:
            check_label_values(d[LABEL], item[LABEL], num_classes, ignore_index)
