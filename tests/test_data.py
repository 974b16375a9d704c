"""Tests of pconv3d.data (MNI-template and phantom datasets) and the ``pconv3d data`` subcommand."""

from __future__ import annotations

import argparse
import importlib.util
import json

import numpy as np
import pytest

from pconv3d.data import make_dataset, mni, phantoms
from pconv3d.io import is_generated_dataset, load_datalist, read_volume_info, validate_datalist
from pconv3d.transforms import infer_transforms, train_transforms

SIZE = 24  # 8 mm voxels: enough anatomy for the checks, fast enough for every test run


def test_phantom_cases_are_deterministic_distinct_and_anisotropic():
    a, again = phantoms.make_case("train", 0, SIZE), phantoms.make_case("train", 0, SIZE)
    np.testing.assert_array_equal(a.image, again.image)
    np.testing.assert_array_equal(a.label, again.label)
    variants = [("train", 1, 0), ("test", 0, 0), ("train", 0, 1)]  # (split, index, seed)
    others = [phantoms.make_case(split, index, SIZE, seed) for split, index, seed in variants]
    assert all(not np.array_equal(a.label, o.label) for o in others)
    assert a.image.shape == (SIZE, SIZE, SIZE // 2) and a.image.dtype == np.float32
    spacing = np.abs(np.diag(a.affine)[:3])
    assert spacing[2] == 2 * spacing[0] == 2 * spacing[1]
    assert set(np.unique(a.label)) == {0, 1, 2, 3}
    # nested structures: the image is brighter label by label
    means = [a.image[a.label == k].mean() for k in range(4)]
    assert means == sorted(means)


def test_mni_cases_are_deterministic_and_anatomically_plausible():
    case = mni.make_case("train", 0, SIZE)
    np.testing.assert_array_equal(case.label, mni.make_case("train", 0, SIZE).label)
    assert not np.array_equal(case.label, mni.make_case("train", 1, SIZE).label)
    assert not np.array_equal(case.label, mni.make_case("test", 0, SIZE).label)
    assert case.image.shape == case.label.shape == (SIZE,) * 3
    np.testing.assert_allclose(np.diag(case.affine)[:3], mni.FOV_MM / SIZE)
    fractions = np.bincount(case.label.ravel(), minlength=4) / case.label.size
    assert 0.5 < fractions[0] < 0.85  # background around a brain that fills most of the field of view
    assert fractions[1] > 0 and fractions[2] > fractions[1] and fractions[3] > fractions[1]
    # T1 contrast: CSF darker than grey matter, darker than white matter
    csf, gm, wm = (np.median(case.image[case.label == k]) for k in (1, 2, 3))
    assert csf < gm < wm
    # MNI coordinates: the grid is centred on the brain, near the template origin
    centre = case.affine[:3, :3] @ np.full(3, (SIZE - 1) / 2) + case.affine[:3, 3]
    assert np.abs(centre).max() < 40


def test_mni_source_files_are_the_bundled_template():
    for name in mni.TEMPLATE_FILES.values():
        info = read_volume_info(mni.template_dir() / name, read_data=False)
        assert info.shape == (197, 233, 189)
        np.testing.assert_allclose(np.abs(np.diag(info.affine)[:3]), 1.0)


@pytest.mark.parametrize("kind", ["phantom", "mni"])
def test_make_dataset_writes_a_valid_msd_folder_usable_by_the_recipes(tmp_path, kind):
    path = make_dataset(kind, tmp_path / kind, n_train=2, n_test=1, size=SIZE, seed=3)
    doc = json.loads(path.read_text())
    assert doc["numTraining"] == 2 and doc["numTest"] == 1 and doc["pconv3d"]["kind"] == kind
    assert len(doc["labels"]) == 4 and "licence" in doc
    train, test = load_datalist(path, "training"), load_datalist(path, "test")
    validate_datalist(train + test)
    image = read_volume_info(train[0]["image"])
    expected = {"mni": mni, "phantom": phantoms}[kind].make_case("train", 0, SIZE, seed=3)
    np.testing.assert_allclose(image.affine, expected.affine, atol=1e-4)
    patches = train_transforms(patch_size=(16, 16, 16), num_samples=1).set_random_state(0)(train[0])
    assert patches[0]["image"].shape == patches[0]["mask"].shape == (1, 16, 16, 16)
    evaluated = infer_transforms(drop_slices={"fraction": 0.25, "pattern": "regular"})(test[0])
    assert (evaluated["mask"][0].amax(dim=(0, 1)) == 0).sum() == round(0.25 * evaluated["mask"].shape[-1])


def test_regenerating_replaces_our_dataset_and_removes_stale_cases(tmp_path):
    out = tmp_path / "ph"
    make_dataset("phantom", out, n_train=3, n_test=1, size=16)
    first = read_volume_info(out / "imagesTr" / "phantom_tr000.nii.gz")
    make_dataset("phantom", out, n_train=3, n_test=1, size=16)  # the same dataset of ours: no overwrite needed
    with pytest.raises(FileExistsError, match=r"ph: holds a dataset generated with other settings \(n_train 3 -> 2\)"):
        make_dataset("phantom", out, n_train=2, n_test=1, size=16)
    assert (out / "imagesTr" / "phantom_tr002.nii.gz").exists()
    make_dataset("phantom", out, n_train=2, n_test=1, size=16, overwrite=True)
    assert not (out / "imagesTr" / "phantom_tr002.nii.gz").exists()
    assert read_volume_info(out / "imagesTr" / "phantom_tr000.nii.gz").shape == first.shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ph"]  # no staging leftovers


def test_foreign_folder_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty and holds no dataset generated by pconv3d"):
        make_dataset("phantom", out, n_train=1, n_test=0, size=16)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    make_dataset("phantom", out, n_train=1, n_test=0, size=16, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me" and is_generated_dataset(out)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        make_dataset("phantom", afile, n_train=1, n_test=0, size=16)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"kind": "ct"}, "kind must be one of"), ({"n_train": 0}, "n_train >= 1"), ({"size": 8}, "size must be between")],
)
def test_make_dataset_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_dataset(**{"kind": "phantom", "output": tmp_path / "x", **kwargs})
    assert not (tmp_path / "x").exists()


def _parser() -> argparse.ArgumentParser:
    from pipelines import data

    parser = argparse.ArgumentParser(prog="pconv3d")
    data.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_data_subcommand_writes_and_refuses(tmp_path, capsys):
    parser = _parser()
    sizes = ["--size", "16", "--n-train", "2", "--n-test", "1"]
    args = parser.parse_args(["data", "--kind", "phantom", "--output", str(tmp_path / "ds"), *sizes])
    assert args.func(args) == 0
    assert "wrote phantom dataset (2 training, 1 test cases, size 16)" in capsys.readouterr().out
    assert len(load_datalist(tmp_path / "ds" / "dataset.json", "training")) == 2
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    args = parser.parse_args(["data", "--kind", "phantom", "--output", str(tmp_path / "other")])
    with pytest.raises(FileExistsError, match="--overwrite"):  # pipelines.errors turns it into one line
        args.func(args)
    assert parser.parse_args(["data", "--output", "d"]).kind == "mni"


@pytest.mark.skipif(importlib.util.find_spec("pipelines.demo") is None, reason="pipelines.demo not written yet")
def test_cli_main_reports_errors_on_one_line(tmp_path, capsys):
    from pipelines.cli import main

    (tmp_path / "x.txt").write_text("x")
    assert main(["data", "--kind", "phantom", "--output", str(tmp_path), "--size", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pconv3d data: error:") and "--overwrite" in err and "\n" not in err
    assert main(["data", "--kind", "phantom", "--output", str(tmp_path / "d"), "--size", "4"]) == 2
