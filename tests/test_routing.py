"""Routing each volume to one of two networks by how far its holes reach (pconv3d.inferers.RoutedInferer and
`pconv3d infer --plain-model`)."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.inferers import SimpleInferer

from pconv3d.inferers import RoutedInferer
from pconv3d.transforms import RECIPES, InputRecipe
from tests.cli_helpers import cli
from tests.test_interpolate_missing import _distance_oracle


def _plain(x: torch.Tensor) -> torch.Tensor:
    """A stand-in network: its input's sum, with a minus sign (so that its outputs are told from the other's)."""
    return -x.sum(1, keepdim=True)


def _main(x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
    return x.sum(1, keepdim=True) + (0 if condition is None else 10 * condition)


def _mixed_holes(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Acquired voxels of a volume with random slices along a random axis and a random box missing, either, or
    none."""
    valid = np.ones(shape, dtype=bool)
    if rng.random() < 0.7:
        axis = int(rng.integers(3))
        gone = rng.random(shape[axis]) < rng.uniform(0.1, 0.8)
        valid[(slice(None),) * axis + (gone,)] = False
    if rng.random() < 0.5:
        lo = [int(rng.integers(n)) for n in shape]
        valid[tuple(slice(a, a + int(rng.integers(1, 5))) for a in lo)] = False
    valid[tuple(int(rng.integers(n)) for n in shape)] = True  # something was acquired
    return valid


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), max_reach=st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.0]),
       recipe=st.sampled_from(["gated", "partial"]))
def test_each_volume_goes_to_the_network_its_hole_reach_names(seed, max_reach, recipe):
    """Mixed holes in a batch: a volume whose farthest missing voxel (by the definition, float64) lies within
    max_reach of an acquired one is segmented by the plain network from its image alone, the others by the
    network given, with the mask where the recipe puts it."""
    rng = np.random.default_rng(seed)
    shape = (7, 6, 5)
    valid = np.stack([_mixed_holes(rng, shape) for _ in range(4)])
    image = torch.randn(4, 1, *shape, dtype=torch.float64)
    mask = torch.from_numpy(valid)[:, None].double()
    mask[~torch.from_numpy(valid)[:, None]] = 0.5  # a soft recipe's confidence on filled voxels
    with_mask = RECIPES[recipe].mask_as_channel
    inputs, kwargs = (torch.cat([image, mask], 1), {}) if with_mask else (image, {"condition": mask})
    out = RoutedInferer(SimpleInferer(), _plain, RECIPES[recipe], max_reach)(inputs, _main, **kwargs)
    for i in range(4):
        reach = _distance_oracle(valid[i])[~valid[i]].max() if not valid[i].all() else 0.0
        expected = _plain(image[i:i + 1]) if reach <= max_reach else _main(inputs[i:i + 1], **{
            k: v[i:i + 1] for k, v in kwargs.items()})
        torch.testing.assert_close(out[i:i + 1], expected, rtol=0, atol=0)


def test_the_choice_is_logged_and_bad_settings_are_refused(caplog):
    inferer = RoutedInferer(SimpleInferer(), _plain, "gated", max_reach=2)
    x = torch.ones(1, 2, 8, 8, 8)
    x[:, 1, :, :, 2:7] = 0.25  # a slab of 5 slices: reach 3
    with caplog.at_level(logging.INFO, logger="pconv3d.inferers"):
        assert inferer(x, _main).min() > 0
    assert "holes reach 3.0 voxels (plain network up to 2): the main network" in caplog.text
    with pytest.raises(ValueError, match="gives the network no mask"):
        RoutedInferer(SimpleInferer(), _plain, "plain")
    with pytest.raises(ValueError, match="max_reach is -1"):
        RoutedInferer(SimpleInferer(), _plain, "gated", max_reach=-1)


@pytest.mark.parametrize("name", ["gated", "partial", "plain"])
def test_image_only_is_the_recipe_without_the_mask(name):
    recipe = RECIPES[name]
    assert recipe.image_only() == InputRecipe(fill=None if recipe.fill is None else "interpolate")
    assert RECIPES["gated"].image_only() is RECIPES["plain"]


def _with_nan_slices(source, target, slices):
    img = nib.load(source)
    data = np.asarray(img.dataobj, dtype=np.float32).copy()
    data[..., slices] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), target)


def test_infer_with_a_plain_model_segments_each_volume_with_one_of_them(dataset, trained, trained_plain, tmp_path,
                                                                        capsys):
    """`pconv3d infer --plain-model`: each volume's probabilities are those of one model's own inference, the
    plain one's for a complete volume and for thin holes within --max-reach, the default's for a slab."""
    source = sorted((dataset / "imagesTs").iterdir())[0]
    volumes = tmp_path / "in"
    volumes.mkdir()
    (volumes / "complete.nii.gz").write_bytes(source.read_bytes())
    _with_nan_slices(source, volumes / "thin.nii.gz", slice(2, None, 3))  # every third slice: reach 1
    _with_nan_slices(source, volumes / "slab.nii.gz", slice(8, 15))  # 7 slices: reach 4
    common = ["--input", volumes, "--probabilities", "--progress", "false"]
    for name, models in (("plain", ["--model", trained_plain / "best.pt"]), ("gated", ["--model", trained / "best.pt"]),
                         ("routed", ["--model", trained / "best.pt", "--plain-model", trained_plain / "best.pt",
                                     "--max-reach", "1"]),
                         ("routed0", ["--model", trained / "best.pt", "--plain-model", trained_plain / "best.pt"])):
        code, err = cli(capsys, "infer", *models, *common, "--output", tmp_path / name)
        assert code == 0, err

    def prob(run, case):
        return np.asarray(nib.load(tmp_path / run / f"{case}_prob.nii.gz").dataobj)

    for run, expected in (("routed", {"complete": "plain", "thin": "plain", "slab": "gated"}),
                          ("routed0", {"complete": "plain", "thin": "gated", "slab": "gated"})):
        for case, model in expected.items():
            np.testing.assert_allclose(prob(run, case), prob(model, case), rtol=0, atol=1e-5, err_msg=f"{run} {case}")
    assert not np.allclose(prob("plain", "slab"), prob("gated", "slab"), atol=1e-3)  # the two models do differ


def test_infer_refuses_a_plain_model_that_does_not_fit(dataset, trained, trained_partial, tmp_path, capsys):
    image = sorted((dataset / "imagesTs").iterdir())[0]
    common = ["--input", image, "--output", tmp_path / "out", "--progress", "false"]
    code, err = cli(capsys, "infer", "--model", trained / "best.pt", "--plain-model", trained / "best.pt", *common)
    assert code == 2 and "the plain model was trained on the recipe 'gated'" in err and "it must take 'plain'" in err
    code, err = cli(capsys, "infer", "--model", trained / "best.pt", "--plain-model", trained_partial / "best.pt",
                    *common)
    assert code == 2 and "trained on the recipe 'partial'" in err, err
    code, err = cli(capsys, "infer", "--model", trained / "best.pt", "--max-reach", "2", *common)
    assert code == 2 and "give the second with --plain-model" in err, err
    code, err = cli(capsys, "infer", "--model", trained / "best.pt", "--max-reach", "-1", *common)
    assert code == 2 and "expected a distance >= 0 (voxels), got '-1'" in err, err
    assert not (tmp_path / "out").exists()
