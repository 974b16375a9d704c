"""Simulated missing data: dropped slices and masked regions, deterministic (evaluation) or random (training)."""

from __future__ import annotations

import os
import zlib
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import ImageMetaKey, TransformBackends, ensure_tuple
from scipy import ndimage

from pconv3d.transforms._utils import _fill, _valid
from pconv3d.transforms.checks import check_mask_values, check_volume
from pconv3d.transforms.filling import FillHoles
from pconv3d.transforms.masks import combine_mask

__all__ = [
    "SLICE_PATTERNS",
    "REGION_SHAPES",
    "drop_slice_pattern",
    "DropSlices",
    "DropSlicesd",
    "MaskRegions",
    "MaskRegionsd",
    "RandDropSlices",
    "RandDropSlicesd",
    "RandMaskRegions",
    "RandMaskRegionsd",
]


SLICE_PATTERNS = ("random", "regular", "block")
REGION_SHAPES = ("box", "blob")


def drop_slice_pattern(n: int, fraction: float, pattern: str, rng: np.random.RandomState) -> np.ndarray:
    """Which of ``n`` slices are kept (True) when exactly ``round(fraction * n)`` of them are dropped.

    Patterns:

    * ``"random"``: dropped slices drawn uniformly without replacement;
    * ``"regular"``: dropped slices evenly spaced with a random phase, as in thick-slice or interleaved
      acquisitions (0.5: every other slice; 0.25: every 4th; 0.75: all but every 4th);
    * ``"block"``: one contiguous block at a random position (a truncated field of view, a lost slab).

    Args:
        n: number of slices.
        fraction: fraction to drop, in ``[0, 1]``.
        pattern: one of :data:`SLICE_PATTERNS`.
        rng: random state for the draw.

    Example:
        >>> drop_slice_pattern(8, 0.5, "regular", np.random.RandomState(0)).astype(int)
        array([1, 0, 1, 0, 1, 0, 1, 0])
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction of dropped slices must be in [0, 1], got {fraction}")
    if pattern not in SLICE_PATTERNS:
        raise ValueError(f"slice pattern must be one of {SLICE_PATTERNS}, got {pattern!r}")
    count = int(round(fraction * n))
    keep = np.ones(n, dtype=bool)
    if count == 0:
        return keep
    if pattern == "random":
        keep[rng.choice(n, size=count, replace=False)] = False
    elif pattern == "regular":
        step = n / count  # >= 1, so the floors below are distinct and stay below n
        keep[np.floor(rng.uniform(0, step) + step * np.arange(count)).astype(int)] = False
    else:
        start = rng.randint(0, n - count + 1)
        keep[start : start + count] = False
    return keep


def _along(keep: np.ndarray, axis: int) -> np.ndarray:
    """A per-slice keep vector reshaped to broadcast along spatial ``axis``."""
    shape = [1, 1, 1]
    shape[axis] = -1
    return keep.reshape(shape)


class _SimulateHoles(Transform):
    """Base of missing-data simulators: a keep-mask (False = simulated hole) applied to an image and its mask.

    Subclasses implement ``_keep(spatial_shape, img)``. The image's holes become 0, the mask (created all-valid
    when ``None``) is ANDed with the keep-mask; labels are never passed here, so they stay untouched.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def _keep(self, spatial_shape: tuple[int, ...], img: NdarrayOrTensor) -> np.ndarray:
        """Boolean array broadcastable to ``spatial_shape``: False for the simulated holes."""
        raise NotImplementedError

    def keep_mask(self, img: NdarrayOrTensor) -> torch.Tensor:
        """The simulated holes for ``img`` as a boolean ``(1, X, Y, Z)`` tensor on its device (False = hole)."""
        check_volume(img)
        spatial_shape = tuple(img.shape[1:])
        keep = torch.as_tensor(np.broadcast_to(self._keep(spatial_shape, img), spatial_shape).copy())
        return keep[None].to(img.device if isinstance(img, torch.Tensor) else "cpu")

    def __call__(
        self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None
    ) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """``(image, mask)`` with the simulated holes; ``mask`` ``None`` starts from all-valid."""
        mask = combine_mask(mask, self.keep_mask(img), img)
        return _fill(img, _valid(mask, img)), mask


class _SimulateHolesd(MapTransform):
    """Routes a missing-data simulator: one draw per sample (from the first key), the same holes in every image
    key, the mask (created all-valid when absent) updated, other keys untouched."""

    backend = _SimulateHoles.backend

    def __init__(
        self, keys: KeysCollection, simulator: _SimulateHoles, mask_key: str, allow_missing_keys: bool
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.simulator = simulator
        self.mask_key = mask_key
        self.filler = FillHoles()

    def _active(self, img: NdarrayOrTensor) -> bool:
        """Whether to add holes to this sample (random subclasses draw here)."""
        return True

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        first = self.first_key(d)
        if first == ():
            return d
        img = d[first]
        check_volume(img, f"'{first}'")
        keep = self.simulator.keep_mask(img) if self._active(img) else None
        mask = d.get(self.mask_key)
        if mask is not None:
            check_mask_values(mask, f"'{self.mask_key}'")
        mask = combine_mask(mask, keep, img)
        for key in self.key_iterator(d):
            d[key] = self.filler(d[key], mask)
        d[self.mask_key] = mask
        return d


class DropSlices(_SimulateHoles):
    """Deterministic slice dropping, for evaluation at an exact missing fraction (25, 50, 75 %, ...).

    The draw depends only on ``seed`` and, with ``per_case``, on the base name of the image's source file
    (``meta["filename_or_obj"]``), so every case gets its own pattern that is identical across runs, data
    loader workers and orderings (and MONAI's ``set_random_state`` does not change it: this is not a random
    transform).

    Args:
        axis: spatial axis of the slices (0, 1, 2 for X, Y, Z). Default 2.
        fraction: fraction of slices to drop; exactly ``round(fraction * n)`` are dropped.
        pattern: ``"random"``, ``"regular"`` or ``"block"`` (see :func:`drop_slice_pattern`).
        seed: base seed.
        per_case: mix the source file name into the seed.

    Example:
        >>> img, mask = DropSlices(axis=2, fraction=0.25, pattern="block")(torch.ones(1, 4, 4, 8))
        >>> int((mask[0, 0, 0] == 0).sum()), bool((img[mask == 0] == 0).all())
        (2, True)
    """

    def __init__(
        self, axis: int = 2, fraction: float = 0.5, pattern: str = "random", seed: int = 0, per_case: bool = True
    ) -> None:
        if axis not in (0, 1, 2):
            raise ValueError(f"spatial axis must be 0, 1 or 2, got {axis}")
        drop_slice_pattern(2, fraction, pattern, np.random.RandomState(0))  # validates fraction and pattern
        self.axis, self.fraction, self.pattern, self.seed, self.per_case = axis, fraction, pattern, seed, per_case

    def _keep(self, spatial_shape: tuple[int, ...], img: NdarrayOrTensor) -> np.ndarray:
        entropy = [self.seed]
        source = img.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(img, MetaTensor) else None
        if self.per_case and isinstance(source, (str, os.PathLike)):
            entropy.append(zlib.crc32(os.path.basename(str(source)).encode()))
        rng = np.random.RandomState(entropy)
        return _along(drop_slice_pattern(spatial_shape[self.axis], self.fraction, self.pattern, rng), self.axis)


class DropSlicesd(_SimulateHolesd):
    """Deterministic slice dropping for evaluation at an exact missing fraction; see
    :class:`DropSlices` (per-case patterns from the seed and the first key's file name).

    Args:
        keys: image keys (zero-filled); the label is not listed and stays untouched.
        mask_key: key of the mask, created all-valid if absent.
        axis: spatial axis of the slices. Default 2.
        fraction: fraction of slices to drop.
        pattern: ``"random"``, ``"regular"`` or ``"block"``.
        seed: base seed.
        per_case: mix the source file name into the seed.
        allow_missing_keys: skip absent keys.

    Example:
        >>> d = DropSlicesd("image", fraction=0.5, pattern="regular")({"image": torch.ones(1, 4, 4, 8)})
        >>> float(d["mask"].mean())
        0.5
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        axis: int = 2,
        fraction: float = 0.5,
        pattern: str = "random",
        seed: int = 0,
        per_case: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, DropSlices(axis, fraction, pattern, seed, per_case), mask_key, allow_missing_keys)


class MaskRegions(_SimulateHoles):
    """Deterministic masked regions, for evaluation at an exact missing fraction: axis-aligned boxes, each
    ``size`` of the volume's extent per axis, added until at least ``fraction`` of the volume is missing.

    As for :class:`DropSlices`, the draw depends only on ``seed`` and, with ``per_case``, on the base name of
    the image's source file, so every case gets its own boxes, the same in every run and for every method.

    Args:
        fraction: fraction of the volume to mask, in [0, 1).
        size: ``(low, high)`` range of each box's extent as a fraction of the volume's extent per axis.
        seed: base seed.
        per_case: mix the source file name into the seed.

    Example:
        >>> img, mask = MaskRegions(fraction=0.25)(torch.ones(1, 16, 16, 16))
        >>> bool(0.25 <= 1 - mask.mean() < 1), bool((img[mask == 0] == 0).all())
        (True, True)
    """

    def __init__(
        self, fraction: float = 0.25, size: Sequence[float] = (0.2, 0.4), seed: int = 0, per_case: bool = True
    ) -> None:
        if not 0 <= fraction < 1:
            raise ValueError(f"fraction must be in [0, 1), got {fraction}")
        size = ensure_tuple(size)
        if not 0 < float(size[0]) <= float(size[-1]) <= 1:
            raise ValueError(f"size must be a range of fractions 0 < low <= high <= 1, got {size}")
        self.fraction, self.size, self.seed, self.per_case = fraction, (float(size[0]), float(size[-1])), seed, per_case

    def _keep(self, spatial_shape: tuple[int, ...], img: NdarrayOrTensor) -> np.ndarray:
        source = img.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(img, MetaTensor) else None
        name = os.path.basename(str(source)) if self.per_case and isinstance(source, (str, os.PathLike)) else ""
        rng = np.random.default_rng([self.seed, *name.encode()])
        shape = np.array(spatial_shape)
        keep = np.ones(spatial_shape, dtype=bool)
        while 1 - keep.mean() < self.fraction:
            extent = np.maximum(1, (rng.uniform(*self.size, 3) * shape).astype(int))
            start = (rng.uniform(0, 1, 3) * (shape - extent + 1)).astype(int)
            keep[tuple(slice(a, a + e) for a, e in zip(start, extent))] = False
        return keep


class MaskRegionsd(_SimulateHolesd):
    """Deterministic masked regions for evaluation at an exact missing fraction; see
    :class:`MaskRegions` (per-case boxes from the seed and the first key's file name).

    Args:
        keys: image keys (zero-filled); the label is not listed and stays untouched.
        mask_key: key of the mask, created all-valid if absent.
        fraction: fraction of the volume to mask.
        size: range of each box's extent as a fraction of the volume's extent per axis.
        seed: base seed.
        per_case: mix the source file name into the seed.
        allow_missing_keys: skip absent keys.

    Example:
        >>> d = MaskRegionsd("image", fraction=0.5)({"image": torch.ones(1, 8, 8, 8)})
        >>> float(d["mask"].mean()) <= 0.5
        True
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        fraction: float = 0.25,
        size: Sequence[float] = (0.2, 0.4),
        seed: int = 0,
        per_case: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, MaskRegions(fraction, size, seed, per_case), mask_key, allow_missing_keys)


class _RandHoles(RandomizableTransform, _SimulateHoles):
    """Base of random simulators: ``randomize`` stores one draw (``_sample``) that ``__call__`` applies."""

    def __init__(self, prob: float) -> None:
        RandomizableTransform.__init__(self, prob)
        self._draw: tuple[tuple[int, ...], np.ndarray] | None = None

    def _sample(self, spatial_shape: tuple[int, ...]) -> np.ndarray:
        """Draw holes for ``spatial_shape`` with ``self.R``: boolean, broadcastable, False = hole."""
        raise NotImplementedError

    def randomize(self, spatial_shape: Sequence[int]) -> None:
        """Draw whether to add holes and, if so, the holes for a volume of ``spatial_shape``."""
        super().randomize(None)
        shape = tuple(int(s) for s in spatial_shape)
        self._draw = (shape, self._sample(shape)) if self._do_transform else None

    def _keep(self, spatial_shape: tuple[int, ...], img: NdarrayOrTensor) -> np.ndarray:
        if self._draw is None:
            return np.ones((1, 1, 1), dtype=bool)
        shape, keep = self._draw
        if shape != spatial_shape:
            raise ValueError(f"the current draw is for spatial shape {shape}, got {spatial_shape}; randomize first")
        return keep

    def __call__(
        self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None, randomize: bool = True
    ) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """``(image, mask)`` with new random holes; ``randomize=False`` reuses the current draw."""
        if randomize:
            check_volume(img)
            self.randomize(img.shape[1:])
        return _SimulateHoles.__call__(self, img, mask)


class _RandSimulateHolesd(RandomizableTransform, _SimulateHolesd):
    """Random version: the wrapper draws whether to act (``prob``), the simulator draws the holes."""

    def __init__(
        self,
        keys: KeysCollection,
        simulator: RandDropSlices | RandMaskRegions,
        mask_key: str,
        prob: float,
        allow_missing_keys: bool,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        _SimulateHolesd.__init__(self, keys, simulator, mask_key, allow_missing_keys)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> _RandSimulateHolesd:
        super().set_random_state(seed, state)
        self.simulator.set_random_state(seed, state)
        return self

    def _active(self, img: NdarrayOrTensor) -> bool:
        self.randomize(None)
        if self._do_transform:
            self.simulator.randomize(img.shape[1:])
        return self._do_transform


class RandDropSlices(_RandHoles):
    """Randomly drop slices (zero-filled in the image, 0 in the mask), for training with missing data.

    Each draw picks an axis from ``axes``, a pattern from ``patterns`` and a fraction uniformly in ``fraction``;
    see :func:`drop_slice_pattern` for the patterns. Randomness comes from ``self.R`` (``set_random_state``).

    Args:
        prob: probability of dropping slices at all.
        axes: spatial axes to choose from (0, 1, 2). Default ``(2,)``.
        fraction: ``(low, high)`` range of the dropped fraction, or a single fraction.
        patterns: patterns to choose from.

    Example:
        >>> t = RandDropSlices(fraction=0.25, patterns="block").set_random_state(0)
        >>> img, mask = t(torch.ones(1, 8, 8, 8))
        >>> int((mask[0, 0, 0] == 0).sum())
        2
    """

    def __init__(
        self,
        prob: float = 1.0,
        axes: Sequence[int] | int = (2,),
        fraction: Sequence[float] | float = (0.1, 0.5),
        patterns: Sequence[str] | str = SLICE_PATTERNS,
    ) -> None:
        super().__init__(prob)
        self.axes = tuple(ensure_tuple(axes))
        if not self.axes or any(a not in (0, 1, 2) for a in self.axes):
            raise ValueError(f"spatial axes must be among 0, 1, 2, got {axes}")
        fraction = ensure_tuple(fraction)
        self.fraction = (float(fraction[0]), float(fraction[-1]))
        self.patterns = tuple(ensure_tuple(patterns))
        if not self.patterns:
            raise ValueError("patterns must not be empty")
        for pattern in self.patterns:
            for f in self.fraction:
                drop_slice_pattern(2, f, pattern, np.random.RandomState(0))  # validates fractions and patterns

    def _sample(self, spatial_shape: tuple[int, ...]) -> np.ndarray:
        axis = self.axes[self.R.randint(len(self.axes))]
        pattern = self.patterns[self.R.randint(len(self.patterns))]
        fraction = self.R.uniform(*self.fraction)
        return _along(drop_slice_pattern(spatial_shape[axis], fraction, pattern, self.R), axis)


class RandDropSlicesd(_RandSimulateHolesd):
    """Randomly drop slices in image keys (zero-filled) and the mask, leaving labels untouched; see
    :class:`RandDropSlices`. The mask is created all-valid when absent, so every
    sample has one whether or not slices were dropped.

    Args:
        keys: image keys.
        mask_key: key of the mask.
        prob: probability of dropping slices in a sample.
        axes: spatial axes to choose from.
        fraction: ``(low, high)`` range of the dropped fraction.
        patterns: patterns to choose from (``"random"``, ``"regular"``, ``"block"``).
        allow_missing_keys: skip absent keys.

    Example:
        >>> t = RandDropSlicesd("image", fraction=0.5, patterns="regular").set_random_state(0)
        >>> float(t({"image": torch.ones(1, 4, 4, 8)})["mask"].mean())
        0.5
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        prob: float = 1.0,
        axes: Sequence[int] | int = (2,),
        fraction: Sequence[float] | float = (0.1, 0.5),
        patterns: Sequence[str] | str = SLICE_PATTERNS,
        allow_missing_keys: bool = False,
    ) -> None:
        simulator = RandDropSlices(1.0, axes, fraction, patterns)
        super().__init__(keys, simulator, mask_key, prob, allow_missing_keys)


class RandMaskRegions(_RandHoles):
    """Random 3D holes: axis-aligned boxes and irregular free-form blobs (zero-filled image, 0 in the mask).

    Each region has extents drawn per axis as a fraction (``size``) of the volume's extent, so anisotropic grids
    get proportionate holes. A blob is an ellipsoid whose boundary is perturbed by smooth random noise
    (``roughness`` relative to its radius), which gives lesion- or artefact-like shapes.

    Args:
        prob: probability of adding holes at all.
        num_regions: ``(low, high)`` inclusive range of the number of regions, or a single number.
        size: ``(low, high)`` range of each region's extent as a fraction of the volume's extent per axis.
        shapes: region shapes to choose from: ``"box"``, ``"blob"``.
        roughness: amplitude of the blob boundary perturbation (0: plain ellipsoids).

    Example:
        >>> img, mask = RandMaskRegions(num_regions=2).set_random_state(0)(torch.ones(1, 16, 16, 16))
        >>> bool((img[mask == 0] == 0).all()), bool(0 < mask.mean() < 1)
        (True, True)
    """

    def __init__(
        self,
        prob: float = 1.0,
        num_regions: Sequence[int] | int = (1, 3),
        size: Sequence[float] | float = (0.1, 0.35),
        shapes: Sequence[str] | str = REGION_SHAPES,
        roughness: float = 0.35,
    ) -> None:
        super().__init__(prob)
        num_regions, size = ensure_tuple(num_regions), ensure_tuple(size)
        self.num_regions = (int(num_regions[0]), int(num_regions[-1]))
        self.size = (float(size[0]), float(size[-1]))
        self.shapes = tuple(ensure_tuple(shapes))
        if not 0 <= self.num_regions[0] <= self.num_regions[1]:
            raise ValueError(f"num_regions must be a range 0 <= low <= high, got {num_regions}")
        if not 0 < self.size[0] <= self.size[1] <= 1:
            raise ValueError(f"size must be a range of fractions 0 < low <= high <= 1, got {size}")
        if not self.shapes or any(s not in REGION_SHAPES for s in self.shapes):
            raise ValueError(f"shapes must be among {REGION_SHAPES}, got {shapes}")
        self.roughness = roughness

    def _sample(self, spatial_shape: tuple[int, ...]) -> np.ndarray:
        shape = np.asarray(spatial_shape)
        keep = np.ones(spatial_shape, dtype=bool)
        for _ in range(self.R.randint(self.num_regions[0], self.num_regions[1] + 1)):
            kind = self.shapes[self.R.randint(len(self.shapes))]
            half = np.maximum(self.R.uniform(*self.size, size=3) * shape / 2, 0.5)
            centre = self.R.uniform(0, shape)
            lo = np.clip(np.floor(centre - half), 0, shape).astype(int)
            hi = np.clip(np.ceil(centre + half), 0, shape).astype(int)
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            keep[box] &= ~self._blob(lo, hi, centre, half) if kind == "blob" else False
        return keep

    def _blob(self, lo: np.ndarray, hi: np.ndarray, centre: np.ndarray, half: np.ndarray) -> np.ndarray:
        """Boolean blob in the box ``lo:hi``: where normalized radius plus smooth unit noise is below 1."""
        axes = [(np.arange(a, b) + 0.5 - c) / h for a, b, c, h in zip(lo, hi, centre, half)]
        radius = np.sqrt(sum(g**2 for g in np.meshgrid(*axes, indexing="ij")))
        noise = ndimage.gaussian_filter(self.R.standard_normal(radius.shape), sigma=np.maximum((hi - lo) / 4, 0.5))
        noise /= max(float(noise.std()), 1e-12)
        return radius + self.roughness * noise < 1.0


class RandMaskRegionsd(_RandSimulateHolesd):
    """Random 3D holes (boxes, free-form blobs) in image keys (zero-filled) and the mask, leaving labels
    untouched; see :class:`RandMaskRegions`.

    Args:
        keys: image keys.
        mask_key: key of the mask, created all-valid if absent.
        prob: probability of adding holes to a sample.
        num_regions: inclusive range of the number of regions.
        size: range of region extents as fractions of the volume's extents.
        shapes: shapes to choose from (``"box"``, ``"blob"``).
        roughness: blob boundary perturbation.
        allow_missing_keys: skip absent keys.

    Example:
        >>> d = RandMaskRegionsd("image").set_random_state(0)({"image": torch.ones(1, 16, 16, 16)})
        >>> bool(d["mask"].min() == 0)
        True
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        prob: float = 1.0,
        num_regions: Sequence[int] | int = (1, 3),
        size: Sequence[float] | float = (0.1, 0.35),
        shapes: Sequence[str] | str = REGION_SHAPES,
        roughness: float = 0.35,
        allow_missing_keys: bool = False,
    ) -> None:
        simulator = RandMaskRegions(1.0, num_regions, size, shapes, roughness)
        super().__init__(keys, simulator, mask_key, prob, allow_missing_keys)
