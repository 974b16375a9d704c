"""Intensity normalization with statistics of the valid voxels only; holes stay 0."""

from __future__ import annotations

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import Transform
from monai.transforms.utils_pytorch_numpy_unification import percentile
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from pconv3d.transforms._utils import _MaskedKeysd, _valid
from pconv3d.transforms.checks import check_volume

__all__ = [
    "MaskedNormalizeIntensity",
    "MaskedNormalizeIntensityd",
    "MaskedScaleIntensityRangePercentiles",
    "MaskedScaleIntensityRangePercentilesd",
]


class _MaskedIntensity(Transform):
    """Base of masked normalizations: statistics from the valid voxels only, holes 0 in the output."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, channel_wise: bool = True, dtype: torch.dtype = torch.float32) -> None:
        self.channel_wise = channel_wise
        self.dtype = dtype

    def _normalize(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` using the statistics of ``values`` (its valid voxels, at least one)."""
        raise NotImplementedError

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor) -> NdarrayOrTensor:
        """Normalized ``img`` ``(C, X, Y, Z)``, statistics over voxels where ``mask`` ``(1, X, Y, Z)`` is 1.

        A channel without any valid voxel is returned as zeros.
        """
        check_volume(img)
        valid = _valid(mask, img)
        x = convert_to_tensor(img, track_meta=False).to(self.dtype)
        x = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))
        out = torch.zeros_like(x)
        groups = [slice(c, c + 1) for c in range(x.shape[0])] if self.channel_wise else [slice(None)]
        for group in groups:
            values = x[group][valid.expand_as(x[group])]
            if values.numel():
                out[group] = self._normalize(x[group], values)
        return convert_to_dst_type(torch.where(valid, out, torch.zeros_like(out)), img, dtype=self.dtype)[0]


class MaskedNormalizeIntensity(_MaskedIntensity):
    """Z-score normalization ``(x - mean) / std`` with mean and std of the valid voxels only; holes stay 0.

    A zero std (constant valid region) divides by 1.

    Args:
        channel_wise: statistics per channel (else over all channels together).
        dtype: output dtype.

    Example:
        >>> img = torch.tensor([1.0, 3.0, 100.0]).reshape(1, 3, 1, 1)
        >>> MaskedNormalizeIntensity()(img, torch.tensor([1.0, 1.0, 0.0]).reshape(1, 3, 1, 1)).flatten()
        tensor([-1.,  1.,  0.])
    """

    def _normalize(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        mean, std = values.double().mean(), values.double().std(unbiased=False)
        return ((x - mean) / (std if std > 0 else 1.0)).to(x.dtype)


class MaskedNormalizeIntensityd(_MaskedKeysd):
    """Z-score image keys with statistics of valid voxels only; see
    :class:`MaskedNormalizeIntensity`.

    Args:
        keys: image keys.
        mask_key: key of the validity mask.
        channel_wise: statistics per channel.
        dtype: output dtype.
        allow_missing_keys: skip absent keys.

    Example:
        >>> image = torch.tensor([1.0, 3.0, 9.0]).reshape(1, 3, 1, 1)
        >>> mask = torch.tensor([1.0, 1, 0]).reshape(1, 3, 1, 1)
        >>> MaskedNormalizeIntensityd("image")({"image": image, "mask": mask})["image"].flatten()
        tensor([-1.,  1.,  0.])
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        channel_wise: bool = True,
        dtype: torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, MaskedNormalizeIntensity(channel_wise, dtype), mask_key, allow_missing_keys)


class MaskedScaleIntensityRangePercentiles(_MaskedIntensity):
    """Map the ``lower``/``upper`` percentiles of the valid voxels to ``b_min``/``b_max``; holes stay 0.

    Args:
        lower: lower percentile (0-100).
        upper: upper percentile (0-100), greater than ``lower``.
        b_min: output value of the lower percentile.
        b_max: output value of the upper percentile.
        clip: clip the output to ``[b_min, b_max]``.
        channel_wise: percentiles per channel (else over all channels together).
        dtype: output dtype.

    Example:
        >>> img = torch.arange(5.0).reshape(1, 5, 1, 1)
        >>> mask = torch.tensor([1.0, 1, 1, 0, 0]).reshape(1, 5, 1, 1)
        >>> MaskedScaleIntensityRangePercentiles(0, 100, 0, 1)(img, mask).flatten()
        tensor([0.0000, 0.5000, 1.0000, 0.0000, 0.0000])
    """

    def __init__(
        self,
        lower: float = 0.5,
        upper: float = 99.5,
        b_min: float = 0.0,
        b_max: float = 1.0,
        clip: bool = False,
        channel_wise: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(channel_wise=channel_wise, dtype=dtype)
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
        self.lower, self.upper, self.b_min, self.b_max, self.clip = lower, upper, b_min, b_max, clip

    def _normalize(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        lo, hi = (float(v) for v in percentile(values, [self.lower, self.upper]))
        scale = (self.b_max - self.b_min) / (hi - lo) if hi > lo else 1.0
        out = (x - lo) * scale + self.b_min
        return out.clamp(min(self.b_min, self.b_max), max(self.b_min, self.b_max)) if self.clip else out


class MaskedScaleIntensityRangePercentilesd(_MaskedKeysd):
    """Percentile scaling of image keys with percentiles of valid voxels only; see
    :class:`MaskedScaleIntensityRangePercentiles`.

    Args:
        keys: image keys.
        mask_key: key of the validity mask.
        lower: lower percentile (0-100).
        upper: upper percentile (0-100).
        b_min: output value of the lower percentile.
        b_max: output value of the upper percentile.
        clip: clip to ``[b_min, b_max]``.
        channel_wise: percentiles per channel.
        dtype: output dtype.
        allow_missing_keys: skip absent keys.

    Example:
        >>> t = MaskedScaleIntensityRangePercentilesd("image", lower=1, upper=99, clip=True)
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        lower: float = 0.5,
        upper: float = 99.5,
        b_min: float = 0.0,
        b_max: float = 1.0,
        clip: bool = False,
        channel_wise: bool = True,
        dtype: torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        transform = MaskedScaleIntensityRangePercentiles(lower, upper, b_min, b_max, clip, channel_wise, dtype)
        super().__init__(keys, transform, mask_key, allow_missing_keys)
