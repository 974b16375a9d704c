"""InterpolateMissing: slices interpolated exactly, other holes filled from their surroundings, confidence
1 / (1 + d / scale) by the distance to the nearest acquired voxel; acquired voxels untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pconv3d.transforms import InterpolateMissing, InterpolateMissingd, missing_slice_axes


def _linear_fill_oracle(x: np.ndarray, present: np.ndarray) -> np.ndarray:
    """float64, per slice position z: linear between the nearest present slices, nearest beyond the ends."""
    known = np.flatnonzero(present)
    out = x.astype(np.float64).copy()
    for z in np.flatnonzero(~present):
        below, above = known[known < z], known[known > z]
        if len(below) and len(above):
            lo, hi = below[-1], above[0]
            w = (z - lo) / (hi - lo)
            out[..., z] = (1 - w) * x[..., lo] + w * x[..., hi]
        else:
            out[..., z] = x[..., (below[-1] if len(below) else above[0])]
    return out


@settings(max_examples=25, deadline=None)
@given(n=st.integers(4, 12), seed=st.integers(0, 10_000), scale=st.sampled_from([0.5, 1.0, 3.0]))
def test_missing_slices_are_interpolated_and_rated_by_distance(n, seed, scale):
    rng = np.random.default_rng(seed)
    present = rng.random(n) > 0.4
    present[rng.integers(n)] = True
    x = rng.normal(size=(2, 3, 4, n))
    mask = np.broadcast_to(present, (1, 3, 4, n)).astype(np.float32)
    holes = np.where(mask.astype(bool), x, np.nan)  # NaN in the holes must not matter
    out, m = InterpolateMissing(scale=scale)(torch.tensor(holes, dtype=torch.float32), torch.tensor(mask))
    np.testing.assert_allclose(out.numpy(), _linear_fill_oracle(x, present), rtol=1e-5, atol=1e-5)
    known = np.flatnonzero(present)
    distance = np.array([np.abs(known - z).min() for z in range(n)], dtype=np.float64)
    expected = np.where(present, 1.0, 1.0 / (1.0 + distance / scale))
    np.testing.assert_allclose(m.numpy(), np.broadcast_to(expected, (1, 3, 4, n)), rtol=1e-6)
    assert out.numpy()[:, :, :, present].tolist() == x.astype(np.float32)[:, :, :, present].tolist()


def test_axes_are_detected_from_the_mask_and_checked():
    m = torch.ones(1, 5, 4, 6)
    m[:, 2] = 0
    assert missing_slice_axes(m) == (0,)
    m[..., 4] = 0
    assert missing_slice_axes(m) == (0, 2)
    assert missing_slice_axes(torch.ones(1, 3, 3, 3)) == ()
    with pytest.raises(ValueError, match="axes.*got 3"):
        InterpolateMissing(axes=3)
    with pytest.raises(ValueError, match="scale"):
        InterpolateMissing(scale=0)


def test_regions_are_filled_from_their_surroundings():
    grid = np.stack(np.meshgrid(*(np.arange(16.0),) * 3, indexing="ij"))
    x = (grid[0] + 2 * grid[1] - grid[2])[None]  # a smooth field
    mask = np.ones((1, 16, 16, 16), np.float32)
    mask[:, 5:11, 4:12, 6:10] = 0  # a box: no whole slice is missing
    holes = np.where(mask.astype(bool), x, np.inf)
    out, m = InterpolateMissing()(torch.tensor(holes, dtype=torch.float32), torch.tensor(mask))
    out, m = out.numpy(), m.numpy()
    inside = ~mask.astype(bool)
    assert np.isfinite(out).all() and out[~inside].tolist() == x.astype(np.float32)[~inside].tolist()
    assert x.min() <= out[inside].min() and out[inside].max() <= x.max()
    assert np.abs(out[inside] - x[inside]).mean() < np.abs(x[inside] - x[~inside].mean()).mean()  # better than a constant
    d = ndimage.distance_transform_edt(inside[0])
    np.testing.assert_allclose(m[0][inside[0]], 1 / (1 + d[inside[0]]), rtol=1e-6)
    assert ((m > 0) & (m <= 1)).all()


def test_acquired_weights_stay_and_edge_cases_pass_through():
    mask = torch.full((1, 2, 2, 4), 0.7)
    mask[..., 1] = 0
    img = torch.ones(1, 2, 2, 4)
    _, m = InterpolateMissing()(img, mask)
    assert m[0, 0, 0].tolist() == pytest.approx([0.7, 0.5, 0.7, 0.7])
    _, kept = InterpolateMissing(soft=False)(img, mask)
    assert torch.equal(kept, mask)
    for whole in (torch.ones(1, 2, 2, 4), torch.zeros(1, 2, 2, 4)):
        out, m = InterpolateMissing()(img, whole)
        assert out is img and m is whole


def test_dictionary_version_fills_every_image_key_with_one_mask():
    img = torch.arange(8.0).reshape(1, 1, 1, 8).repeat(1, 2, 2, 1)
    mask = torch.ones(1, 2, 2, 8)
    mask[..., 3] = 0
    d = InterpolateMissingd(["image", "other"])({"image": img * mask, "other": 2 * img * mask, "mask": mask})
    assert d["image"][0, 0, 0, 3] == 3.0 and d["other"][0, 0, 0, 3] == 6.0
    assert d["mask"][0, 0, 0].tolist() == pytest.approx([1, 1, 1, 0.5, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="mask"):
        InterpolateMissingd("image")({"image": img, "mask": mask * 2})  # weights beyond 1


def _distance_oracle(valid: np.ndarray) -> np.ndarray:
    """float64, from the definition: each voxel's smallest Euclidean distance to a valid voxel."""
    points = np.argwhere(valid).astype(np.float64)
    grid = np.indices(valid.shape).reshape(3, -1).T.astype(np.float64)
    return np.sqrt(((grid[:, None] - points[None]) ** 2).sum(-1)).min(1).reshape(valid.shape)


@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(*[st.integers(1, 7)] * 3), axis=st.integers(0, 2), seed=st.integers(0, 2**16),
       extra=st.sampled_from(["none", "voxel", "other axis", "every axis", "every axis and a voxel"]))
def test_hole_distance_is_the_euclidean_distance(shape, axis, seed, extra):
    """Whole slices along one axis take the 1-D path, whole slices along several axes the separable one; a hole
    voxel beside them takes the full transform; all equal the definition."""
    from pconv3d.transforms import hole_distance

    rng = np.random.default_rng(seed)
    present = rng.random(shape[axis]) < 0.5
    present[rng.integers(shape[axis])] = True
    view = [1, 1, 1]
    view[axis] = -1
    valid = np.broadcast_to(present.reshape(view), shape).copy()
    if extra == "voxel":
        valid[tuple(rng.integers(n) for n in shape)] = False
    elif extra == "other axis":
        other = (axis + 1) % 3
        valid[(slice(None),) * other + (rng.integers(shape[other]),)] = False
    elif extra.startswith("every axis"):
        for other in range(3):
            valid[(slice(None),) * other + (rng.random(shape[other]) < 0.3,)] = False
        if extra.endswith("voxel"):
            valid[tuple(rng.integers(n) for n in shape)] = False
    if not valid.any():
        return
    got = hole_distance(torch.from_numpy(valid))
    assert got.dtype == torch.float32 and got.shape == shape
    np.testing.assert_allclose(got.numpy(), _distance_oracle(valid), rtol=1e-6, atol=0)


@settings(max_examples=30, deadline=None)
@given(shape=st.tuples(*[st.integers(1, 6)] * 3), seed=st.integers(0, 2**16), density=st.floats(0.05, 1.0))
def test_hole_reach_is_the_farthest_missing_voxel(shape, seed, density):
    """The largest distance from a missing voxel to the nearest valid one, by the definition; 0 with nothing
    missing."""
    from pconv3d.transforms import hole_reach

    valid = np.random.default_rng(seed).random(shape) < density
    if not valid.any():
        return
    expected = _distance_oracle(valid)[~valid].max() if not valid.all() else 0.0
    assert hole_reach(torch.from_numpy(valid)) == pytest.approx(expected, rel=1e-6)
