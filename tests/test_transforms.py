"""Tests of pconv3d.transforms: masks from real data, masked normalization, valid crop centres, simulated
missing data, and the train/infer recipes (alignment of image, mask and label; inversion)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose, RandCropByPosNegLabeld

from pconv3d.io import save_volume
from pconv3d.transforms import (
    SLICE_PATTERNS,
    CheckGridd,
    DeriveMask,
    DeriveMaskd,
    DropSlices,
    DropSlicesd,
    FillHoles,
    FillHolesd,
    MaskedNormalizeIntensity,
    MaskedNormalizeIntensityd,
    MaskedScaleIntensityRangePercentiles,
    MaskedScaleIntensityRangePercentilesd,
    RECIPES,
    OneHotAnnotated,
    PrepareBatchViews,
    RandDropSlicesd,
    RandMaskRegionsd,
    ValidFgBgToIndices,
    ValidFgBgToIndicesd,
    drop_slice_pattern,
    infer_transforms,
    invert_transforms,
    train_transforms,
)

AFFINE = np.array([[-2.0, 0, 0, 40], [0, 1.5, 0, -30], [0, 0, 3.0, 12], [0, 0, 0, 1]])


def meta_image(array: np.ndarray, name: str = "case_a.nii.gz") -> MetaTensor:
    """A channel-first MetaTensor as LoadImage + EnsureChannelFirst would give."""
    return MetaTensor(torch.as_tensor(array)[None], affine=torch.as_tensor(AFFINE), meta={"filename_or_obj": name})


def random_image(rng: np.random.Generator, shape=(12, 10, 8)) -> np.ndarray:
    return rng.uniform(1.0, 2.0, shape).astype(np.float32)


# ---------------------------------------------------------------- masks from real data


def test_derive_mask_nonfinite_and_fill_value():
    rng = np.random.default_rng(0)
    x = random_image(rng)
    holes = rng.random(x.shape) < 0.1
    kinds = rng.integers(0, 4, x.shape)
    x[holes & (kinds == 0)] = np.nan
    x[holes & (kinds == 1)] = np.inf
    x[holes & (kinds == 2)] = -np.inf
    x[holes & (kinds == 3)] = -1024.0
    img = meta_image(x)
    mask = DeriveMask(fill_value=-1024.0)(img)
    assert isinstance(mask, MetaTensor) and mask.dtype == torch.float32 and mask.shape == (1, *x.shape)
    np.testing.assert_array_equal(mask[0].numpy(), (~holes).astype(np.float32))
    assert torch.equal(mask.affine, img.affine)
    filled = FillHoles()(img, mask)
    assert torch.isfinite(filled).all() and (filled[mask == 0] == 0).all()
    np.testing.assert_array_equal(filled[0].numpy()[~holes], x[~holes])


def test_derive_mask_without_fill_value_keeps_equal_voxels():
    x = np.full((4, 4, 4), -1024.0, dtype=np.float32)
    assert DeriveMask()(meta_image(x)).min() == 1


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_derive_mask_detects_missing_slices(axis):
    rng = np.random.default_rng(axis)
    x = random_image(rng)
    n = x.shape[axis]
    nan_slice, const_slice, fill_slice = rng.choice(n, 3, replace=False)
    index = [slice(None)] * 3
    for i, value in ((nan_slice, np.nan), (const_slice, 0.0), (fill_slice, -5.0)):
        index[axis] = i
        x[tuple(index)] = value
    mask = DeriveMask(fill_value=-5.0, slice_axes=axis)(meta_image(x))[0].numpy()
    per_slice = mask.mean(axis=tuple(a for a in range(3) if a != axis))
    expected = np.ones(n)
    expected[[nan_slice, const_slice, fill_slice]] = 0
    np.testing.assert_array_equal(per_slice, expected)
    # without constant-slice detection the zero slice is valid again; the all-invalid ones stay missing
    per_slice = DeriveMask(fill_value=-5.0, slice_axes=axis, constant_slices=False)(meta_image(x))[0].numpy()
    expected[const_slice] = 1
    np.testing.assert_array_equal(per_slice.mean(axis=tuple(a for a in range(3) if a != axis)), expected)


def test_derive_mask_constant_slices_are_per_channel():
    x = np.random.default_rng(1).uniform(1, 2, (2, 6, 6, 5)).astype(np.float32)
    x[0, :, :, 3] = 0.0  # only channel 0 is constant there: the slice still holds data
    x[:, :, :, 1] = np.array([0.0, 7.0])[:, None, None]  # each channel constant: missing
    mask = DeriveMask(slice_axes=2)(torch.as_tensor(x))
    np.testing.assert_array_equal(mask[0, 0, 0].numpy(), [1, 0, 1, 1, 1])


def test_derive_mask_listed_slices_and_existing_mask():
    rng = np.random.default_rng(2)
    x = random_image(rng)
    existing = (rng.random(x.shape) > 0.2).astype(np.float32)
    listed = [1, 4, -1]
    mask = DeriveMask(missing_slices=listed, missing_slices_axis=1)(meta_image(x), mask=meta_image(existing))
    expected = existing.copy()
    expected[:, listed, :] = 0
    np.testing.assert_array_equal(mask[0].numpy(), expected)
    with pytest.raises(ValueError, match=r"\[10\] out of range for 10 slices along spatial axis 1"):
        DeriveMask(missing_slices=[10], missing_slices_axis=1)(meta_image(x))


def test_derive_mask_numpy_in_numpy_out():
    x = np.ones((1, 3, 3, 3), dtype=np.float32)
    x[0, 1, 1, 1] = np.nan
    mask = DeriveMask()(x)
    assert isinstance(mask, np.ndarray) and mask.dtype == np.float32 and mask.sum() == 26


def test_bad_shapes_name_key_file_and_shapes():
    img = meta_image(np.ones((8, 8, 8), np.float32), name="scan_07.nii.gz")
    flat = MetaTensor(torch.ones(1, 8, 8), meta={"filename_or_obj": "flat.nii.gz"})
    with pytest.raises(ValueError, match=r"'image' 'flat.nii.gz': expected a channel-first 3D volume .* \(1, 8, 8\)"):
        DeriveMaskd("image")({"image": flat})
    small = meta_image(np.ones((8, 8, 7), np.float32), name="scan_07_mask.nii.gz")
    with pytest.raises(ValueError, match=r"'mask' 'scan_07_mask.nii.gz' does not match 'image' 'scan_07.nii.gz'"):
        DeriveMaskd("image")({"image": img, "mask": small})
    with pytest.raises(ValueError, match=r"shape \(8, 8, 7\) differs from \(8, 8, 8\)"):
        CheckGridd(["label"])({"image": img, "label": small})
    moved = meta_image(np.ones((8, 8, 8), np.float32), name="label.nii.gz")
    moved.affine = moved.affine + torch.tensor([[0.0, 0, 0, 5], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"'label' 'label.nii.gz' does not match 'image'.*affine differs by up to 5"):
        CheckGridd(["label"])({"image": img, "label": moved})


def test_derive_maskd_slices_from_data_or_metadata_and_and_of_keys():
    rng = np.random.default_rng(3)
    t1, t2 = random_image(rng), random_image(rng)
    t1[0, 0, 0], t2[1, 1, 1] = np.nan, np.nan
    img1 = meta_image(t1)
    img1.meta["missing_slices"] = "2, 5"
    d = DeriveMaskd(["t1", "t2"], missing_slices_key="missing_slices")({"t1": img1, "t2": meta_image(t2)})
    expected = np.ones(t1.shape, np.float32)
    expected[0, 0, 0] = expected[1, 1, 1] = 0
    expected[:, :, [2, 5]] = 0
    np.testing.assert_array_equal(d["mask"][0].numpy(), expected)
    for key in ("t1", "t2"):
        assert (d[key][d["mask"] == 0] == 0).all() and torch.isfinite(d[key]).all()
    d = DeriveMaskd("t1", missing_slices_key="gaps")({"t1": meta_image(random_image(rng)), "gaps": np.array([7])})
    assert d["mask"][..., 7].max() == 0 and d["mask"][..., :7].min() == 1


# ---------------------------------------------------------------- masked normalization


def test_masked_zscore_uses_valid_voxels_only():
    rng = np.random.default_rng(4)
    x = rng.normal(50, 10, (2, 10, 9, 8)).astype(np.float32)
    valid = rng.random((10, 9, 8)) > 0.3
    x[:, ~valid] = 1e6  # outliers in the holes must not move the statistics
    out = MaskedNormalizeIntensity()(torch.as_tensor(x), torch.as_tensor(valid[None].astype(np.float32)))
    for c in range(2):
        values = x[c][valid]
        np.testing.assert_allclose(out[c].numpy()[valid], (values - values.mean()) / values.std(), rtol=1e-4, atol=1e-5)
        assert (out[c].numpy()[~valid] == 0).all()
    joint = MaskedNormalizeIntensity(channel_wise=False)(torch.as_tensor(x), torch.as_tensor(valid[None] * 1.0))
    values = x[:, valid]
    np.testing.assert_allclose(joint.numpy()[:, valid], (values - values.mean()) / values.std(), rtol=1e-4, atol=1e-5)


def test_masked_percentiles_map_to_range_and_holes_stay_zero():
    rng = np.random.default_rng(5)
    x = rng.gamma(2.0, 30.0, (1, 12, 12, 6)).astype(np.float32)
    valid = rng.random((12, 12, 6)) > 0.25
    x[0, ~valid] = -999.0
    mask = torch.as_tensor(valid[None].astype(np.float32))
    out = MaskedScaleIntensityRangePercentiles(lower=5, upper=95, b_min=-1, b_max=1)(meta_image(x[0]), mask)
    lo, hi = np.percentile(x[0][valid], [5, 95])
    np.testing.assert_allclose(out[0].numpy()[valid], (x[0][valid] - lo) / (hi - lo) * 2 - 1, rtol=1e-4, atol=1e-5)
    assert (out[0].numpy()[~valid] == 0).all() and isinstance(out, MetaTensor)
    clipped = MaskedScaleIntensityRangePercentiles(5, 95, 0, 1, clip=True)(torch.as_tensor(x), mask)
    assert clipped.min() >= 0 and clipped.max() <= 1


def test_masked_normalization_dict_needs_the_mask():
    image = meta_image(np.arange(8, dtype=np.float32).reshape(2, 2, 2))
    mask = meta_image(np.array([1, 1, 1, 1, 0, 0, 0, 0], np.float32).reshape(2, 2, 2))
    out = MaskedNormalizeIntensityd("image")({"image": image, "mask": mask})
    np.testing.assert_allclose(out["image"].flatten().numpy()[:4], (np.arange(4) - 1.5) / np.arange(4).std(), rtol=1e-6)
    with pytest.raises(KeyError, match="no validity mask 'mask' for 'image'; run DeriveMaskd"):
        MaskedNormalizeIntensityd("image")({"image": image})


def test_masked_normalization_of_empty_or_constant_region():
    x = torch.full((1, 4, 4, 4), 3.0)
    assert MaskedNormalizeIntensity()(x, torch.zeros(1, 4, 4, 4)).abs().sum() == 0
    assert MaskedNormalizeIntensity()(x, torch.ones(1, 4, 4, 4)).abs().sum() == 0


# ---------------------------------------------------------------- crop centres on valid voxels


def test_valid_fg_bg_indices_cover_exactly_the_valid_voxels():
    rng = np.random.default_rng(6)
    label = (rng.random((1, 9, 8, 7)) > 0.7).astype(np.float32)
    mask = (rng.random((1, 9, 8, 7)) > 0.4).astype(np.float32)
    fg, bg = ValidFgBgToIndices()(torch.as_tensor(label), torch.as_tensor(mask))
    flat_label, flat_mask = label.ravel(), mask.ravel()
    np.testing.assert_array_equal(np.sort(fg.numpy()), np.flatnonzero((flat_label > 0) & (flat_mask > 0)))
    np.testing.assert_array_equal(np.sort(bg.numpy()), np.flatnonzero((flat_label == 0) & (flat_mask > 0)))
    fg_np, _ = ValidFgBgToIndices()(label, mask)
    assert isinstance(fg_np, np.ndarray)
    with pytest.warns(UserWarning, match="no valid voxel"):
        fg, bg = ValidFgBgToIndices()(torch.as_tensor(label), torch.zeros(1, 9, 8, 7))
    assert len(fg) + len(bg) == label.size



# ---------------------------------------------------------------- one-hot labels with unannotated voxels


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), channels=st.integers(1, 5), levels=st.integers(1, 4), nan=st.booleans(),
       options=st.sampled_from([{}, {"to_onehot": 5}, {"keepdim": False}, {"dim": 1}, {"dtype": torch.float16}]))
def test_as_discrete_is_monais(seed, channels, levels, nan, options):
    """Same results, type, dtype and metadata as MONAI's AsDiscrete, ties (few levels) and NaN included."""
    from monai.transforms import AsDiscrete as MonaiAsDiscrete
    from monai.transforms import AsDiscreted as MonaiAsDiscreted

    from pconv3d.transforms import AsDiscrete, AsDiscreted

    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, (channels, 4, 3, 5)).astype(np.float32)
    if nan:
        scores[tuple(rng.integers(n) for n in scores.shape)] = np.nan
    to_onehot = options.get("to_onehot")
    kwargs = {k: v for k, v in options.items() if k != "to_onehot"}
    for img in (meta_image(scores), scores):
        ours = AsDiscrete(argmax=True, to_onehot=to_onehot, **kwargs)(img)
        theirs = MonaiAsDiscrete(argmax=True, to_onehot=to_onehot, **kwargs)(img)
        assert type(ours) is type(theirs) and ours.dtype == theirs.dtype and ours.shape == theirs.shape
        assert np.array_equal(np.asarray(ours), np.asarray(theirs), equal_nan=True)
        assert np.array_equal(ours.affine, theirs.affine)
    assert np.allclose(AsDiscrete(argmax=True)(meta_image(scores)).affine, AFFINE)
    d = {"pred": meta_image(scores), "label": meta_image(scores[:1])}
    ours = AsDiscreted(["pred", "label"], argmax=[True, False], to_onehot=[to_onehot, None], **kwargs)(dict(d))
    theirs = MonaiAsDiscreted(["pred", "label"], argmax=[True, False], to_onehot=[to_onehot, None], **kwargs)(dict(d))
    for key in d:
        assert np.array_equal(np.asarray(ours[key]), np.asarray(theirs[key]), equal_nan=True)
        assert np.allclose(ours[key].affine, AFFINE)


def test_one_hot_annotated_is_zero_where_unannotated_and_keeps_the_grid():
    label = meta_image(np.array([2.0, 255, 0, 1]).reshape(4, 1, 1))
    onehot = OneHotAnnotated(3, ignore_index=255)(label)
    expected = [[0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]]  # channel by channel; voxel 1 unannotated
    assert onehot[..., 0, 0].tolist() == expected and onehot.dtype == torch.float32
    assert isinstance(onehot, MetaTensor) and np.allclose(onehot.affine, AFFINE)
    assert isinstance(OneHotAnnotated(3)(np.zeros((1, 2, 2, 2))), np.ndarray)
    with pytest.raises(ValueError, match="expected one channel of class indices"):
        OneHotAnnotated(3)(torch.zeros(3, 2, 2, 2))


def test_validation_dice_of_train_yaml_leaves_unannotated_voxels_out():
    from monai.metrics import DiceMetric

    from pipelines.config import load_config

    post = load_config(["train.yaml"], {"num_classes": 3}).get_parsed_content("validate#postprocessing")
    label = torch.tensor([1.0, 1, 0, 2, 255, 255]).reshape(1, 6, 1, 1)
    logits = torch.nn.functional.one_hot(torch.tensor([1, 0, 0, 2, 1, 2]), 3).T.reshape(3, 6, 1, 1).float()
    d = post({"pred": logits, "label": label})
    metric = DiceMetric(include_background=False)  # what the validation's MeanDice computes
    metric([d["pred"]], [d["label"]])
    # class 1: label at voxels 0-1, prediction at 0 (4 is unannotated): 2/3; class 2: 1 (5 is unannotated)
    assert metric.aggregate().item() == pytest.approx((2 / 3 + 1) / 2)


def test_crops_are_centred_on_valid_voxels():
    rng = np.random.default_rng(7)
    shape = (24, 24, 24)
    label = np.zeros(shape, np.float32)
    label[4:20, 4:20, 4:20] = 1
    mask = np.ones(shape, np.float32)
    mask[:, :, 8:20] = 0  # most of the foreground is a hole
    coords = np.stack(np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij"))
    data = {"label": label[None], "mask": mask[None], "z": coords[2:]}
    data = {k: torch.as_tensor(v) for k, v in data.items()}
    tf = Compose(
        [
            ValidFgBgToIndicesd("label"),
            RandCropByPosNegLabeld(
                ["label", "mask", "z"], "label", (5, 5, 5), pos=1, neg=1, num_samples=40,
                fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices",
            ),
        ]
    ).set_random_state(int(rng.integers(1000)))
    for patch in tf(data):
        assert patch["mask"][0, 2, 2, 2] == 1  # the centre voxel
        assert not 8 <= patch["z"][0, 2, 2, 2] < 20


# ---------------------------------------------------------------- simulated missing data


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 64),
    fraction=st.floats(0, 1),
    pattern=st.sampled_from(SLICE_PATTERNS),
    seed=st.integers(0, 2**31 - 1),
)
def test_drop_slice_pattern_drops_exactly_the_fraction(n, fraction, pattern, seed):
    keep = drop_slice_pattern(n, fraction, pattern, np.random.RandomState(seed))
    dropped = np.flatnonzero(~keep)
    assert len(dropped) == int(round(fraction * n))
    if pattern == "block" and len(dropped):
        assert dropped[-1] - dropped[0] == len(dropped) - 1
    if pattern == "regular" and len(dropped) > 1:
        gaps = np.diff(dropped)  # evenly spaced: gaps differ by at most one slice
        assert gaps.max() - gaps.min() <= 1


def test_drop_slice_pattern_rejects_bad_arguments():
    with pytest.raises(ValueError, match="fraction"):
        drop_slice_pattern(10, 1.5, "random", np.random.RandomState(0))
    with pytest.raises(ValueError, match="pattern"):
        DropSlices(pattern="every-other")


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("pattern", SLICE_PATTERNS)
def test_drop_slicesd_exact_fraction_label_untouched(fraction, pattern):
    rng = np.random.default_rng(8)
    label = meta_image((rng.random((8, 8, 16)) > 0.5).astype(np.float32))
    data = {"image": meta_image(random_image(rng, (8, 8, 16))), "label": label}
    out = DropSlicesd("image", axis=2, fraction=fraction, pattern=pattern, seed=3)(data)
    per_slice = out["mask"][0].numpy().mean(axis=(0, 1))
    assert set(per_slice.tolist()) <= {0.0, 1.0} and (per_slice == 0).sum() == 16 * fraction
    assert (out["image"][out["mask"] == 0] == 0).all() and (out["image"][out["mask"] == 1] > 0).all()
    assert out["label"] is label
    assert torch.equal(out["mask"].affine, data["image"].affine)


def test_drop_slices_is_deterministic_per_case():
    rng = np.random.default_rng(9)
    x = random_image(rng, (6, 6, 40))
    first = DropSlices(fraction=0.5, seed=1)(meta_image(x, "a.nii.gz"))[1]
    again = Compose([DropSlicesd("image", fraction=0.5, seed=1)]).set_random_state(123)
    assert torch.equal(again({"image": meta_image(x, "/elsewhere/a.nii.gz")})["mask"], first)
    other_case = DropSlices(fraction=0.5, seed=1)(meta_image(x, "b.nii.gz"))[1]
    other_seed = DropSlices(fraction=0.5, seed=2)(meta_image(x, "a.nii.gz"))[1]
    assert not torch.equal(other_case, first) and not torch.equal(other_seed, first)
    shared = DropSlices(fraction=0.5, seed=1, per_case=False)
    assert torch.equal(shared(meta_image(x, "a.nii.gz"))[1], shared(meta_image(x, "b.nii.gz"))[1])


def test_drop_slicesd_combines_with_existing_mask():
    existing = (np.random.default_rng(17).random((4, 4, 8)) > 0.3).astype(np.float32)
    out = DropSlicesd("image", fraction=0.25, pattern="block")(
        {"image": meta_image(np.ones((4, 4, 8), np.float32)), "mask": meta_image(existing)}
    )
    _, dropped_only = DropSlices(fraction=0.25, pattern="block")(meta_image(np.ones((4, 4, 8), np.float32)))
    np.testing.assert_array_equal(out["mask"][0].numpy(), existing * dropped_only[0].numpy())
    assert dropped_only.mean() == 0.75


@pytest.mark.parametrize("transform_type", [RandDropSlicesd, RandMaskRegionsd])
def test_random_holes_reproducible_shared_across_keys_label_untouched(transform_type):
    rng = np.random.default_rng(10)
    shape = (16, 16, 16)

    def sample():
        return {
            "t1": meta_image(random_image(rng, shape)),
            "t2": meta_image(random_image(rng, shape)),
            "label": meta_image(np.ones(shape, np.float32)),
        }

    def run(seed, data):
        return transform_type(["t1", "t2"]).set_random_state(seed)(data)

    data = sample()
    a, b, c = run(5, data), run(5, sample()), run(6, data)
    assert torch.equal(a["mask"], b["mask"]) and not torch.equal(a["mask"], c["mask"])
    assert 0 < float(a["mask"].mean()) < 1
    for key in ("t1", "t2"):
        assert (a[key][a["mask"] == 0] == 0).all() and (a[key][a["mask"] == 1] > 0).all()
    assert a["label"] is data["label"]
    off = transform_type(["t1", "t2"], prob=0.0)(sample())
    assert off["mask"].min() == 1 and off["mask"].shape == (1, *shape)


def test_blobs_are_irregular_and_boxes_are_boxes():
    shape = (32, 32, 32)
    for kind in ("box", "blob"):
        tf = RandMaskRegionsd("image", num_regions=1, size=(0.4, 0.5), shapes=kind).set_random_state(11)
        hole = tf({"image": torch.ones(1, *shape)})["mask"][0].numpy() == 0
        where = np.argwhere(hole)
        bbox_volume = np.prod(where.max(0) - where.min(0) + 1)
        fill = hole.sum() / bbox_volume
        assert (fill == 1.0) if kind == "box" else (0.2 < fill < 0.85)


@pytest.mark.parametrize(
    "transform",
    [
        DeriveMaskd("image", fill_value=0.0),
        FillHolesd("image"),
        MaskedNormalizeIntensityd("image"),
        MaskedScaleIntensityRangePercentilesd("image"),
        DropSlicesd("image"),
        RandDropSlicesd("image"),
        RandMaskRegionsd("image"),
    ],
    ids=lambda t: type(t).__name__,
)
def test_dict_transforms_keep_metatensors_affine_and_metadata(transform):
    rng = np.random.default_rng(18)
    image = meta_image(random_image(rng, (10, 10, 10)), name="keep.nii.gz")
    mask = meta_image((rng.random((10, 10, 10)) > 0.2).astype(np.float32), name="keep.nii.gz")
    original = image.clone()
    out = transform({"image": image, "mask": mask})
    assert torch.equal(image, original)  # inputs are not modified in place
    for key in ("image", "mask"):
        assert isinstance(out[key], MetaTensor) and out[key].dtype == torch.float32
        assert torch.equal(out[key].affine, image.affine) and out[key].meta["filename_or_obj"] == "keep.nii.gz"


# ---------------------------------------------------------------- recipes


def _files(folder, affine=AFFINE, **arrays) -> dict[str, str]:
    """Write each array as ``<key>.nii.gz`` in ``folder``: a datalist entry."""
    return {key: str(save_volume(array, affine, folder / f"{key}.nii.gz")) for key, array in arrays.items()}


def _write_case(folder, rng, affine=AFFINE, shape=(24, 20, 16), nan_slices=(), mask_from_label=False):
    """An asymmetric label, an image that encodes it, optional NaN slices and a mask file."""
    label = np.zeros(shape, np.uint8)
    label[3:13, 4:16, 2:9] = 1  # off-centre: a flip or shift of one key only would show
    image = (100.0 + 60.0 * label + rng.normal(0, 2, shape)).astype(np.float32)
    image[:, :, list(nan_slices)] = np.nan
    masks = {"mask": label} if mask_from_label else {}
    return _files(folder, affine, image=image, label=label, **masks), label


@pytest.mark.filterwarnings("ignore:Num foregrounds")  # mask == label: no valid background to centre on
def test_train_recipe_keeps_image_mask_label_aligned(tmp_path):
    rng = np.random.default_rng(12)
    # the mask file equals the label: every geometric step must keep them voxel-for-voxel equal
    item, _ = _write_case(tmp_path, rng, mask_from_label=True)
    affine = {"prob": 1.0, "rotate_range": (0.4,) * 3, "scale_range": (0.15,) * 3, "translate_range": (3,) * 3}
    tf = train_transforms(
        patch_size=(16, 16, 16), num_samples=3, pixdim=(2.5, 2.0, 2.5), drop_slices=None, mask_regions=None,
        affine=affine, intensity=False,
    )
    for seed in range(4):
        for patch in tf.set_random_state(seed)(item):
            image, mask, label = (patch[k] for k in ("image", "mask", "label"))
            assert image.shape == mask.shape == label.shape == (1, 16, 16, 16)
            assert torch.equal(mask, label)
            assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
            assert (image[mask == 0] == 0).all()
            assert torch.allclose(image.affine, label.affine) and torch.allclose(mask.affine, label.affine)


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a positive voxel scores higher than a negative one (rank formula)."""
    ranks = np.argsort(np.argsort(score, kind="stable"), kind="stable") + 1.0
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_train_recipe_image_predicts_label_and_misaligned_controls_fail(tmp_path):
    # image = an oblique intensity ramp (linear interpolation reproduces it exactly), label = ramp above its
    # median: in every patch the image must rank label voxels above background voxels. Spacing by an integer
    # factor keeps nearest and linear sampling on the same points, so only misalignment lowers the score.
    shape = (24, 20, 16)
    ramp = sum(c * g for c, g in zip((1.0, 2.0, 3.0), np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")))
    label = (ramp > np.median(ramp)).astype(np.uint8)
    image = (100 + ramp).astype(np.float32)
    image[:, :, 5] = np.nan
    item = _files(tmp_path, image=image, label=label)
    affine = {"prob": 1.0, "rotate_range": (0.3, 0.3, 0.3), "scale_range": (0.1, 0.1, 0.1)}
    tf = train_transforms(
        patch_size=(16, 16, 16), num_samples=4, pixdim=(2.0, 3.0, 3.0), drop_slices=None, mask_regions=None,
        affine=affine, intensity=False,
    )
    aligned, flipped, shifted = [], [], []
    for seed in range(3):
        for patch in tf.set_random_state(seed)(item):
            valid = (patch["mask"][0] > 0).numpy()
            image_p, label_p = patch["image"][0].numpy()[valid], (patch["label"][0].numpy() > 0)
            controls = (np.flip(label_p, axis=2)[valid], np.roll(label_p, 1, axis=2)[valid])
            if min(min(c.sum(), (~c).sum()) for c in (label_p[valid], *controls)) > 20:
                aligned.append(_auc(image_p, label_p[valid]))
                flipped.append(_auc(image_p, controls[0]))
                shifted.append(_auc(image_p, controls[1]))
    assert len(aligned) >= 4
    assert min(aligned) > 0.98 and max(flipped) < 0.8 and np.mean(shifted) < min(aligned) - 0.03


@pytest.mark.parametrize("size", [12, 20])  # smaller than the patch (padding), larger (translation only)
def test_train_recipe_outside_the_field_of_view_is_missing(tmp_path, size):
    shape = (size, size, size)
    label = np.zeros(shape, np.uint8)
    label[2:8, 3:9, 4:10] = 1
    image = np.full(shape, 5.0, np.float32)
    item = _files(tmp_path, image=image, label=label)
    tf = train_transforms(
        patch_size=(16, 16, 16), num_samples=2, drop_slices=None, mask_regions=None,
        affine={"prob": 1.0, "translate_range": (4, 4, 4)}, flips=False, intensity=False, normalize=None,
    )
    for seed in range(3):
        for patch in tf.set_random_state(seed)(item):
            # padding and translation bring in voxels from outside the scan: they must be missing
            assert 0 < patch["mask"].sum() <= np.prod(shape) and patch["mask"].sum() < 16**3
            assert torch.equal(patch["image"] > 0, patch["mask"] > 0)


def test_train_recipe_missing_data_and_collation(tmp_path):
    rng = np.random.default_rng(14)
    item, label = _write_case(tmp_path, rng, nan_slices=(3, 4))
    drop = {"prob": 1.0, "fraction": (0.3, 0.5)}
    tf = train_transforms(patch_size=(16, 16, 16), num_samples=2, drop_slices=drop, mask_regions={"prob": 1.0})
    tf.set_random_state(0)
    batch = next(iter(DataLoader(Dataset([item, item], tf), batch_size=2, num_workers=0)))
    assert set(batch) == {"image", "mask", "label"}
    for key in batch:
        assert batch[key].shape == (4, 1, 16, 16, 16) and batch[key].dtype == torch.float32
    assert (batch["image"][batch["mask"] == 0] == 0).all() and torch.isfinite(batch["image"]).all()
    assert 0 < float(batch["mask"].mean()) < 1
    assert ((batch["label"] == 1) & (batch["mask"] == 0)).any()  # holes do not erase the label


def test_infer_recipe_drops_exact_fraction_and_inverts_to_original_grid(tmp_path):
    rng = np.random.default_rng(15)
    lps = np.array([[-1.5, 0, 0, 20], [0, -2.0, 0, 30], [0, 0, 2.5, -10], [0, 0, 0, 1]])  # not RAS, anisotropic
    item, label = _write_case(tmp_path, rng, affine=lps)
    tf = infer_transforms(pixdim=(1.0, 1.0, 1.25), drop_slices={"fraction": 0.5, "pattern": "regular", "axis": 2})
    d = tf(item)
    assert d["image"].shape[1:] != label.shape and np.allclose(np.diag(d["image"].affine)[:3], [1.0, 1.0, 1.25])
    per_slice = d["mask"][0].mean(dim=(0, 1))
    assert (per_slice == 0).sum() == round(0.5 * d["mask"].shape[-1])
    d["pred"] = d["label"].clone()
    restored = invert_transforms(tf)(d)["pred"]
    assert restored.shape == (1, *label.shape)
    np.testing.assert_allclose(restored.affine.numpy(), lps, atol=1e-5)
    np.testing.assert_array_equal(restored[0].numpy(), label)


def test_recipes_reject_misaligned_files(tmp_path):
    rng = np.random.default_rng(16)
    item, label = _write_case(tmp_path, rng)
    item["label"] = str(save_volume(label[:, :, :-1], AFFINE, tmp_path / "short.nii.gz"))
    with pytest.raises(RuntimeError) as info:  # MONAI's Compose wraps errors; the cause names the files
        infer_transforms()(item)
    cause = info.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, ValueError)
    expected = r"'label' '.*short.nii.gz' does not match 'image' '.*image.nii.gz': shape \(24, 20, 15\) differs"
    assert re.search(expected, str(cause))


def test_interpolate_slices_matches_numpy_interp_and_leaves_valid_slices():
    from pconv3d.transforms import InterpolateSlices, InterpolateSlicesd

    rng = np.random.default_rng(3)
    img = torch.from_numpy(rng.normal(size=(2, 5, 4, 12)).astype(np.float32))
    keep = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0], bool)
    mask = torch.from_numpy(np.broadcast_to(keep, (1, 5, 4, 12)).astype(np.float32).copy())
    holes = torch.where(mask.bool(), img, torch.tensor(float("nan")))
    out = InterpolateSlices(axis=2)(torch.nan_to_num(holes), mask)
    idx = np.arange(12)
    ref = np.apply_along_axis(lambda v: np.interp(idx, idx[keep], v[keep]), -1, img.numpy())
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[..., keep], img[..., keep])
    d = InterpolateSlicesd("image", axis=2)({"image": torch.nan_to_num(holes), "mask": mask})
    assert torch.equal(d["mask"], mask) and torch.allclose(d["image"], out)


# ---------------------------------------------------------------------------------------------------
# one meaning of valid: binary masks nonzero, floating masks weights in [0, 1]


def test_soft_weights_travel_through_the_transforms_unchanged():
    rng = np.random.default_rng(5)
    x = meta_image(random_image(rng, (8, 8, 8)))
    weights = meta_image(rng.choice([0.0, 0.25, 0.5, 1.0], size=(8, 8, 8)).astype(np.float32))
    d = DeriveMaskd("image", mask_key="mask")({"image": x, "mask": weights})
    assert torch.equal(d["mask"].as_tensor(), weights.as_tensor())  # 0.25 is valid data, not a hole
    assert torch.equal(d["image"].as_tensor()[weights.as_tensor() != 0], x.as_tensor()[weights.as_tensor() != 0])
    assert (d["image"].as_tensor()[weights.as_tensor() == 0] == 0).all()
    dropped = DropSlicesd("image", fraction=0.25, pattern="regular")(d)
    kept = dropped["mask"].as_tensor()
    holes_new = (kept == 0) & (weights.as_tensor() != 0)
    assert holes_new.any()  # new holes are 0 ...
    assert torch.equal(kept[kept != 0], weights.as_tensor()[kept != 0])  # ... and every other weight is kept
    norm = MaskedNormalizeIntensityd("image", mask_key="mask")(dropped)
    assert (norm["image"].as_tensor()[kept == 0] == 0).all() and norm["image"].as_tensor()[kept != 0].std() > 0.5


def test_integer_masks_are_valid_wherever_nonzero():
    rng = np.random.default_rng(6)
    x = meta_image(random_image(rng, (6, 6, 6)))
    binary = rng.random((6, 6, 6)) > 0.3
    as_255 = MetaTensor(torch.as_tensor(binary.astype(np.uint8) * 255)[None], affine=torch.as_tensor(AFFINE))
    d = DeriveMaskd("image", mask_key="mask")({"image": x, "mask": as_255})
    assert torch.equal(d["mask"].as_tensor(), torch.as_tensor(binary, dtype=torch.float32)[None])


@pytest.mark.parametrize("bad", [255.0, -0.5, float("nan")])
def test_floating_masks_outside_0_1_are_refused_with_key_and_value(bad):
    rng = np.random.default_rng(7)
    x = meta_image(random_image(rng, (6, 6, 6)))
    m = np.ones((6, 6, 6), np.float32)
    m[1, 2, 3] = bad
    for tf in (DeriveMaskd("image", mask_key="validity"), FillHolesd("image", mask_key="validity"),
               DropSlicesd("image", fraction=0.5, mask_key="validity")):
        with pytest.raises(ValueError, match=rf"'validity'.*weights in \[0, 1\], found {re.escape(str(bad))}"):
            tf({"image": x, "validity": meta_image(m)})


def test_recipes_read_integer_mask_files_as_nonzero_valid(tmp_path):
    rng = np.random.default_rng(13)
    image = rng.uniform(1.0, 2.0, (8, 8, 6)).astype(np.float32)
    valid = rng.random((8, 8, 6)) > 0.3
    item = _files(tmp_path, image=image, mask=(valid * 255).astype(np.uint8))  # a 0/255 mask file
    d = infer_transforms(axcodes=None, normalize=None)(item)
    np.testing.assert_array_equal(d["mask"][0].numpy(), valid.astype(np.float32))


def test_mask_regions_reach_the_fraction_and_depend_on_the_case_only():
    from monai.data import MetaTensor

    from pconv3d.transforms import MaskRegionsd

    image = MetaTensor(torch.ones(1, 20, 20, 20), meta={"filename_or_obj": "/a/case1.nii.gz"})
    a = MaskRegionsd("image", fraction=0.5)({"image": image})
    b = MaskRegionsd("image", fraction=0.5)({"image": image.clone()})
    assert 0.5 <= 1 - float(a["mask"].mean()) < 0.9 and torch.equal(a["mask"], b["mask"])
    assert bool((a["image"][a["mask"] == 0] == 0).all()) and bool((a["image"][a["mask"] == 1] == 1).all())
    other = MetaTensor(torch.ones(1, 20, 20, 20), meta={"filename_or_obj": "/b/case2.nii.gz"})
    assert not torch.equal(a["mask"], MaskRegionsd("image", fraction=0.5)({"image": other})["mask"])
    with pytest.raises(ValueError, match="fraction"):
        MaskRegionsd("image", fraction=1.0)


@pytest.mark.parametrize("recipe", [None, "gated"])
def test_train_complete_view_equals_the_image_without_simulated_holes(tmp_path, recipe):
    rng = np.random.default_rng(16)
    item, _ = _write_case(tmp_path, rng, nan_slices=(3,))  # a real hole: in both views
    tf = train_transforms(patch_size=(16, 16, 16), num_samples=2, drop_slices=None, mask_regions=None, recipe=recipe,
                          affine={"prob": 1.0, "rotate_range": (0.3,) * 3}, intensity=True, complete_view=True)
    for seed in range(3):
        for patch in tf.set_random_state(seed)(item):
            assert set(patch) == {"image", "mask", "label", "image_complete", "mask_complete"}
            assert patch["image"].shape == (1 + (recipe == "gated"), 16, 16, 16)
            assert torch.equal(patch["image"], patch["image_complete"])
            assert torch.equal(patch["mask"], patch["mask_complete"])
            assert 0 < float((patch["mask"] == 1).float().mean()) < 1


def test_train_complete_view_has_no_simulated_holes_and_the_same_geometry(tmp_path):
    rng = np.random.default_rng(17)
    item, _ = _write_case(tmp_path, rng)
    tf = train_transforms(patch_size=(16, 16, 16), num_samples=2, drop_slices={"prob": 1.0, "fraction": (0.3, 0.5)},
                          mask_regions=None, affine=None, normalize=None, intensity=True, complete_view=True)
    for seed in range(3):
        for patch in tf.set_random_state(seed)(item):
            holed, complete = patch["mask"] > 0, patch["mask_complete"] > 0
            assert (holed <= complete).all() and complete.sum() > holed.sum()  # only the holed view lost voxels
            # same crop, flips, intensity scaling and noise (the affine, which blurs holes into their borders in
            # the holed view only, is checked above): equal wherever the holed view is valid
            assert torch.equal(patch["image"][holed], patch["image_complete"][holed])
            assert (patch["image_complete"][complete & ~holed] != 0).all()


@pytest.mark.parametrize("recipe, extra", [("gated", False), ("partial", True)])
def test_prepare_batch_views_concatenates_holed_then_complete(recipe, extra):
    batch = {"image": torch.zeros(2, 1, 4, 4, 4), "mask": torch.zeros(2, 1, 4, 4, 4),
             "image_complete": torch.ones(2, 1, 4, 4, 4), "mask_complete": torch.full((2, 1, 4, 4, 4), 2.0),
             "label": torch.arange(2.0).view(2, 1, 1, 1, 1).expand(2, 1, 4, 4, 4)}
    prepared = RECIPES[recipe].prepare_batch(complete_view=True)(batch)
    image, label = prepared[:2]
    assert image[:, 0, 0, 0, 0].tolist() == [0, 0, 1, 1] and label[:, 0, 0, 0, 0].tolist() == [0, 1, 0, 1]
    assert len(prepared) == (4 if extra else 2)
    if extra:
        assert prepared[2] == () and prepared[3]["condition"][:, 0, 0, 0, 0].tolist() == [0, 0, 2, 2]
    assert type(RECIPES[recipe].prepare_batch()) is not PrepareBatchViews  # off by default
