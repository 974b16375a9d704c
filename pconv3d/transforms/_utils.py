"""Private helpers of the transform modules: a mask read as checked weights, holes filled, new masks, key routing."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_tensor

from pconv3d.transforms.checks import _source, check_mask_values, check_same_grid, check_volume

__all__: list[str] = []


def _weights(mask: NdarrayOrTensor, img: NdarrayOrTensor) -> torch.Tensor:
    """``mask`` as float32 weights ``(1, X, Y, Z)`` on ``img``'s device (bool/integer: 1 where nonzero), after
    checking that it fits ``img`` and holds weights in [0, 1]."""
    check_volume(mask, "mask")
    if mask.shape[0] != 1:
        raise ValueError(f"mask{_source(mask)}: expected one channel (1, X, Y, Z), got shape {tuple(mask.shape)}")
    check_same_grid(mask, img)
    check_mask_values(mask)
    device = img.device if isinstance(img, torch.Tensor) else None
    m = convert_to_tensor(mask, track_meta=False, device=device)
    return m.to(torch.float32) if m.is_floating_point() else (m != 0).to(torch.float32)


def _valid(mask: NdarrayOrTensor, img: NdarrayOrTensor) -> torch.Tensor:
    """Boolean ``(1, X, Y, Z)`` validity of ``mask`` (a nonzero weight), on ``img``'s device (see :func:`_weights`)."""
    return _weights(mask, img) != 0


def _as_mask(weights: torch.Tensor, like: NdarrayOrTensor) -> NdarrayOrTensor:
    """``weights`` (bool or float) as a float32 mask of ``like``'s type and device, carrying ``like``'s metadata."""
    return convert_to_dst_type(weights, like, dtype=torch.float32)[0]


def _fill(img: NdarrayOrTensor, valid: torch.Tensor, value: float = 0.0) -> NdarrayOrTensor:
    """``img`` with ``value`` wherever ``valid`` is False (NaN and inf there too); type and metadata kept."""
    x = convert_to_tensor(img, track_meta=False)
    out = torch.where(valid.to(x.device), x, torch.tensor(value, dtype=x.dtype, device=x.device))
    return convert_to_dst_type(out, img)[0]


def _get_mask(d: Mapping[Hashable, Any], mask_key: Hashable, key: Hashable) -> NdarrayOrTensor:
    if mask_key not in d:
        raise KeyError(f"no validity mask '{mask_key}' for '{key}'; run DeriveMaskd (or DropSlicesd) first")
    check_mask_values(d[mask_key], f"'{mask_key}'")
    return d[mask_key]


class _MaskedKeysd(MapTransform):
    """Routes each key to ``transform(d[key], d[mask_key])``."""

    def __init__(self, keys: KeysCollection, transform: Transform, mask_key: str, allow_missing_keys: bool) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = transform
        self.mask_key = mask_key
        self.backend = transform.backend

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], _get_mask(d, self.mask_key, key))
        return d
