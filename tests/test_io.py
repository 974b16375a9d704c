"""Tests of pconv3d.io: SimpleITK reader/writer for MONAI, atomic writing, datalists and input validation."""

from __future__ import annotations

import json
import re
import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.transforms import LoadImage, SaveImage
from scipy.spatial.transform import Rotation

from pconv3d.io import (
    SimpleITKReader,
    SimpleITKWriter,
    atomic_write,
    load_datalist,
    load_folder,
    read_volume_info,
    save_volume,
    validate_case,
    validate_datalist,
    write_datalist,
)

FORMATS = ["nii.gz", "nii", "mha", "mhd", "nrrd"]


def oblique_affine(seed: int) -> np.ndarray:
    """A rotated, anisotropic, shifted RAS affine."""
    rng = np.random.default_rng(seed)
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", rng.uniform(-40, 40, 3), degrees=True).as_matrix() @ np.diag(
        rng.uniform(0.5, 3.0, 3)
    )
    affine[:3, 3] = rng.uniform(-100, 100, 3)
    return affine


def random_volume(seed: int, dtype: str, shape=(7, 6, 5)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -1000), min(info.max, 1000), shape, endpoint=True).astype(dtype)
    return rng.normal(0, 100, shape).astype(dtype)


def load(path, reader=None, **kwargs):
    reader = reader if reader is not None else SimpleITKReader()
    return LoadImage(reader=reader, image_only=True, dtype=None, **kwargs)(path)


# ---------------------------------------------------------------- round trips and reader agreement


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32", "float64"])
def test_round_trip_keeps_array_affine_spacing_dtype(tmp_path, ext, dtype):
    array, affine = random_volume(len(ext), dtype), oblique_affine(len(dtype))
    path = save_volume(array, affine, tmp_path / f"vol.{ext}")
    img = load(path)
    assert img.dtype == torch.from_numpy(array).dtype
    np.testing.assert_array_equal(img.numpy(), array)
    np.testing.assert_allclose(img.affine.numpy(), affine, atol=1e-4)
    np.testing.assert_allclose(img.meta["spacing"], np.linalg.norm(affine[:3, :3], axis=0), rtol=1e-5)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary leftovers


@pytest.mark.parametrize("ext", ["nii.gz", "nii"])
@pytest.mark.parametrize("writer", ["nibabel", "simpleitk"])
def test_nibabel_and_simpleitk_readers_agree(tmp_path, ext, writer):
    array, affine = random_volume(1, "float32"), oblique_affine(2)
    path = tmp_path / f"written_by_{writer}.{ext}"
    if writer == "nibabel":
        nib.save(nib.Nifti1Image(array, affine), path)
    else:
        sitk_writer = SimpleITKWriter()
        sitk_writer.set_data_array(array, channel_dim=None)
        sitk_writer.set_metadata({"affine": affine})
        sitk_writer.write(path)
    by_nibabel, by_sitk = load(path, reader="NibabelReader"), load(path)
    np.testing.assert_array_equal(by_sitk.numpy(), by_nibabel.numpy())
    np.testing.assert_allclose(by_sitk.affine.numpy(), by_nibabel.affine.numpy(), atol=1e-5)
    np.testing.assert_allclose(by_nibabel.affine.numpy(), affine, atol=1e-5)


def test_writer_matches_an_independent_simpleitk_geometry(tmp_path):
    # RAS (1, 2, 3) is LPS (-1, -2, 3): check the sign convention against SimpleITK's own view of the file
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [10, 20, 30]
    path = save_volume(np.zeros((3, 4, 5), np.float32), affine, tmp_path / "v.mha")
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (3, 4, 5)
    np.testing.assert_allclose(image.GetOrigin(), [-10, -20, 30])
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), np.diag([-1.0, -1.0, 1.0]))
    np.testing.assert_allclose(image.GetSpacing(), [2, 3, 4])


def test_saveimage_with_simpleitk_writer_and_channels(tmp_path):
    array, affine = random_volume(3, "float32", (2, 6, 5, 4)), oblique_affine(4)
    channels = save_volume(array, affine, tmp_path / "two.nrrd", channel_dim=0)
    img = load(channels, ensure_channel_first=True)
    assert img.shape == (2, 6, 5, 4)
    np.testing.assert_array_equal(img.numpy(), array)
    single = load(save_volume(array[0], affine, tmp_path / "one.nii.gz"), ensure_channel_first=True)
    saver = SaveImage(
        tmp_path / "out", output_ext=".mha", writer=SimpleITKWriter, separate_folder=False, print_log=False
    )
    saver(single)
    written = tmp_path / "out" / "one_trans.mha"
    again = load(written)
    np.testing.assert_array_equal(again.numpy(), array[0])
    np.testing.assert_allclose(again.affine.numpy(), affine, atol=1e-4)
    with pytest.raises(RuntimeError, match="one_trans.mha: already exists"):  # SaveImage wraps writer errors
        saver(single)  # nothing is overwritten unless asked
    stacked = load([written, tmp_path / "one.nii.gz"], ensure_channel_first=True)
    assert stacked.shape == (2, 6, 5, 4)


# ---------------------------------------------------------------- safe writing


def test_atomic_write_refuses_to_overwrite_and_cleans_up(tmp_path):
    target = tmp_path / "v.nii.gz"
    save_volume(np.ones((4, 4, 4), np.float32), np.eye(4), target)
    before = target.read_bytes()
    with pytest.raises(FileExistsError, match="v.nii.gz"):
        save_volume(np.zeros((4, 4, 4), np.float32), np.eye(4), target)
    assert target.read_bytes() == before

    def failing(path):
        path.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, failing, overwrite=True)
    assert target.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["v.nii.gz"]
    save_volume(np.zeros((4, 4, 4), np.float32), np.eye(4), target, overwrite=True)
    assert load(target).sum() == 0


def test_mhd_companion_file_moves_with_its_header(tmp_path):
    path = save_volume(random_volume(5, "int16"), np.eye(4), tmp_path / "v.mhd")
    names = sorted(os.listdir(tmp_path))
    assert names[0] == "v.mhd" and len(names) == 2  # header + its .raw/.zraw, under the final names
    assert "ElementDataFile = v." in path.read_text(errors="ignore")
    with pytest.raises(FileExistsError):
        save_volume(random_volume(6, "int16"), np.eye(4), path)


# ---------------------------------------------------------------- bad input


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


@pytest.mark.parametrize("ext", ["nii.gz", "nii", "mha", "nrrd"])
def test_truncated_files_fail_with_the_file_name(tmp_path, ext):
    path = save_volume(random_volume(7, "float32", (20, 18, 16)), np.eye(4), tmp_path / f"cut.{ext}")
    _truncate(path)
    with pytest.raises(ValueError, match=f"cut.{ext}"):
        SimpleITKReader().read(path)  # ITK alone would zero-fill a truncated NIfTI file silently
    with pytest.raises(ValueError, match=f"cut.{ext}"):
        read_volume_info(path)


def test_missing_and_non_image_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.nii.gz: no such image file"):
        SimpleITKReader().read(tmp_path / "absent.nii.gz")
    with pytest.raises(FileNotFoundError, match="absent.mha: no such image file"):
        read_volume_info(tmp_path / "absent.mha")
    junk = tmp_path / "notes.mha"
    junk.write_text("not an image")
    with pytest.raises(ValueError, match="notes.mha: cannot read image"):
        SimpleITKReader().read(junk)
    with pytest.raises(RuntimeError, match="notes.mha: cannot read image"):  # LoadImage collects reader errors
        load(junk)
    junk_nifti = tmp_path / "notes.nii.gz"
    junk_nifti.write_text("not an image")
    with pytest.raises(ValueError, match="notes.nii.gz"):
        read_volume_info(junk_nifti)


@pytest.mark.parametrize("shape", [(8, 8), (6, 6, 6, 2, 3)])
def test_2d_and_5d_files_are_rejected(tmp_path, shape):
    path = tmp_path / "odd.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), path)
    expected = rf"odd.nii.gz: image must be a 3D volume .* got shape {re.escape(str(shape))}"
    with pytest.raises(ValueError, match=expected):
        validate_case({"image": str(path)})


def test_case_validation_names_files_and_differences(tmp_path):
    affine = oblique_affine(8)
    image = save_volume(random_volume(8, "float32"), affine, tmp_path / "img.nii.gz")
    good = save_volume(np.zeros((7, 6, 5), np.uint8), affine, tmp_path / "lab.mha")
    infos = validate_case({"image": str(image), "label": str(good)})
    assert infos["label"].shape == (7, 6, 5)
    short = save_volume(np.zeros((7, 6, 4), np.uint8), affine, tmp_path / "short.nii.gz")
    expected = r"short.nii.gz: label does not match image .*img.nii.gz: shape \(7, 6, 4\) differs from \(7, 6, 5\)"
    with pytest.raises(ValueError, match=expected):
        validate_case({"image": str(image), "label": str(short)})
    moved = affine.copy()
    moved[:3, 3] += [0, 0, 2.5]
    shifted = save_volume(np.ones((7, 6, 5), np.uint8), moved, tmp_path / "mask.nii.gz")
    with pytest.raises(ValueError, match=r"mask.nii.gz: mask does not match image .* affine differs by up to 2.5"):
        validate_case({"image": str(image), "mask": str(shifted)})
    two_channel_label = save_volume(np.zeros((2, 7, 6, 5), np.uint8), affine, tmp_path / "two.nii.gz", channel_dim=0)
    expected = r"two.nii.gz: label must be a 3D volume \(X, Y, Z\), got shape \(7, 6, 5, 2\)"
    with pytest.raises(ValueError, match=expected):
        validate_case({"image": str(image), "label": str(two_channel_label)})


# ---------------------------------------------------------------- datalists


def test_dataset_json_relative_paths_and_msd_test_strings(tmp_path):
    for name in ("a", "b", "t"):
        save_volume(np.zeros((4, 4, 4), np.float32), np.eye(4), tmp_path / "imgs" / f"{name}.nii.gz")
    save_volume(np.zeros((4, 4, 4), np.uint8), np.eye(4), tmp_path / "labs" / "a.nii.gz")
    doc = {
        "training": [{"image": "./imgs/a.nii.gz", "label": "labs/a.nii.gz", "weight": 2}],
        "validation": [{"image": "imgs/b.nii.gz", "mask": None}],
        "test": ["./imgs/t.nii.gz"],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    train = load_datalist(tmp_path / "dataset.json")
    assert train == [{"image": str(tmp_path / "imgs/a.nii.gz"), "label": str(tmp_path / "labs/a.nii.gz"), "weight": 2}]
    assert load_datalist(tmp_path / "dataset.json", "test") == [{"image": str(tmp_path / "imgs/t.nii.gz")}]
    validate_datalist(train + load_datalist(tmp_path / "dataset.json", "validation"))
    with pytest.raises(ValueError, match=r"no 'holdout' list \(lists present: \['training', 'validation', 'test'\]\)"):
        load_datalist(tmp_path / "dataset.json", "holdout")
    doc["training"].append({"image": "imgs/missing.nii.gz"})
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(FileNotFoundError, match=r"training\[1\]\.image: .*missing.nii.gz does not exist"):
        load_datalist(tmp_path / "dataset.json")
    (tmp_path / "broken.json").write_text('{"training": [}')
    with pytest.raises(ValueError, match=r"broken.json: not valid JSON \(line 1"):
        load_datalist(tmp_path / "broken.json")


def test_write_datalist_round_trip_is_relative_and_atomic(tmp_path):
    image = save_volume(np.zeros((4, 4, 4), np.float32), np.eye(4), tmp_path / "d" / "imagesTr" / "x.nii.gz")
    path = write_datalist(tmp_path / "d" / "dataset.json", {"name": "x", "training": [{"image": str(image)}]})
    assert json.loads(path.read_text())["training"] == [{"image": "./imagesTr/x.nii.gz"}]
    assert load_datalist(path) == [{"image": str(image)}]
    with pytest.raises(FileExistsError):
        write_datalist(path, {"training": []})
    assert json.loads(path.read_text())["name"] == "x"


def test_load_folder_pairs_masks_and_skips_other_files(tmp_path):
    for name in ("b.nii.gz", "a.mha", "a_mask.mha", "c.nrrd"):
        save_volume(np.zeros((4, 4, 4), np.float32), np.eye(4), tmp_path / name)
    (tmp_path / "readme.txt").write_text("x")
    items = load_folder(tmp_path)
    assert [os.path.basename(i["image"]) for i in items] == ["a.mha", "b.nii.gz", "c.nrrd"]
    assert os.path.basename(items[0]["mask"]) == "a_mask.mha" and "mask" not in items[1]
    save_volume(np.zeros((4, 4, 4), np.float32), np.eye(4), tmp_path / "z_mask.nii.gz")
    with pytest.raises(ValueError, match="z_mask.nii.gz: mask file without an image named z"):
        load_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no volumes"):
        load_folder(tmp_path / "empty")


@pytest.mark.parametrize("names, message", [
    (("a.nii.gz", "a.nrrd"), "a.nii.gz and a.nrrd: two volumes named a in one folder"),
    (("a.nii.gz", "a_mask.mha", "a_mask.nii.gz"), "a_mask.mha and a_mask.nii.gz: two volumes named a_mask in one folder"),
])
def test_load_folder_refuses_two_volumes_of_one_name(tmp_path, names, message):
    for name in names:
        save_volume(np.zeros((4, 4, 4), np.float32), np.eye(4), tmp_path / name)
    with pytest.raises(ValueError, match=message):
        load_folder(tmp_path)
