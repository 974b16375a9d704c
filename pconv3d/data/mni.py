"""The default dataset: brain MRI cases made from the MNI152 2009 template that ships inside ``nilearn``.

Source (no download): ``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``, the
ICBM 2009a nonlinear symmetric T1 template (skull-stripped, rescaled to uint8 by nilearn) and its grey- and
white-matter probability maps, 197x233x189 voxels of 1 mm. See ``docs/data.md`` for provenance and licence.

Labels: 0 background, 1 CSF, 2 grey matter, 3 white matter. The template carries no CSF map, so CSF is the
remaining probability inside the brain: ``P(CSF) = max(0, B - P(GM) - P(WM))`` where ``B`` is the fraction of
a voxel inside the skull-stripped template (``T1 > 0``, which includes ventricles and sulcal CSF), and
``P(background) = 1 - B``; each voxel takes the most probable class.

Each case resamples the template onto a ``size``-cubed grid of ``192 / size`` mm (48 voxels of 4 mm by
default) through a random smooth deformation (a small rotation, anisotropic scaling, shift and a smooth
elastic displacement field), then changes contrast (gamma and per-tissue shifts), multiplies a smooth bias
field, adds Rician noise and applies a random gain. Cases depend only on ``(seed, split, index)``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import nilearn
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from pconv3d.io.datalist import Case

__all__ = ["LABELS", "LICENCE", "TEMPLATE_FILES", "FOV_MM", "template_dir", "grid", "make_case", "header"]

LABELS = {"0": "background", "1": "CSF", "2": "grey matter", "3": "white matter"}
TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
FOV_MM = 192.0  # covers the template's brain (at most 181 mm along y) with a margin
# the notice the template's terms require in every copy (also in docs/data.md)
LICENCE = (
    "Derived from the MNI ICBM152 2009a nonlinear symmetric template. Copyright (C) 1993-2004 Louis Collins, "
    "McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University. Permission to use, "
    "copy, modify, and distribute this software and its documentation for any purpose and without fee is "
    "hereby granted, provided that the above copyright notice appear in all copies. The authors and McGill "
    "University make no representations about the suitability of this software for any purpose. It is "
    'provided "as is" without express or implied warranty. The authors are not responsible for any data loss, '
    "equipment damage, property loss, or injury to subjects or patients resulting from the use or misuse of "
    "this software package."
)
_SOURCE_MM = 2.0  # the 1 mm template is block-averaged to 2 mm once; cases are far coarser
_SPLITS = {"train": 0, "test": 1}


class _Template(NamedTuple):
    volumes: dict[str, np.ndarray]  # t1, gm, wm, brain: float32 in [0, 1] on the 2 mm grid
    affine: np.ndarray  # of the 2 mm grid
    centre: np.ndarray  # centre of the brain's bounding box, mm


def template_dir() -> Path:
    """The folder of nilearn's bundled template files.

    Example:
        >>> (template_dir() / TEMPLATE_FILES["t1"]).is_file()
        True
    """
    return Path(nilearn.__file__).parent / "datasets" / "data"


def _block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    n = [s // factor for s in volume.shape]
    cropped = volume[: n[0] * factor, : n[1] * factor, : n[2] * factor]
    return cropped.reshape(n[0], factor, n[1], factor, n[2], factor).mean(axis=(1, 3, 5))


@functools.lru_cache(maxsize=1)
def _template() -> _Template:
    """Load, check and block-average the bundled template (cached: every case resamples the same source)."""
    folder = template_dir()
    images = {}
    for key, name in TEMPLATE_FILES.items():
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: MNI template file not found in the installed nilearn ({nilearn.__version__}); "
                "reinstall nilearn>=0.10 or use --kind phantom"
            )
        images[key] = nib.load(path)
    ref = images["t1"]
    for key, img in images.items():
        if img.shape != ref.shape or not np.allclose(img.affine, ref.affine):
            raise ValueError(f"{img.get_filename()}: grid {img.shape} differs from {ref.get_filename()} {ref.shape}")
    raw = {key: np.asarray(img.dataobj, dtype=np.float32) for key, img in images.items()}
    factor = int(round(_SOURCE_MM / abs(ref.affine[0, 0])))
    volumes = {key: _block_mean(v / max(float(v.max()), 1.0), factor) for key, v in raw.items()}
    volumes["brain"] = _block_mean((raw["t1"] > 0).astype(np.float32), factor)
    # voxel i of the coarse grid is centred on fine voxels factor*i .. factor*i + factor - 1
    affine = ref.affine @ np.diag([factor, factor, factor, 1.0])
    affine[:3, 3] = ref.affine[:3, 3] + ref.affine[:3, :3] @ np.full(3, (factor - 1) / 2)
    inside = np.argwhere(volumes["brain"] > 0.5)
    corners = affine[:3, :3] @ np.stack([inside.min(0), inside.max(0)]).T + affine[:3, 3:4]
    return _Template(volumes, affine, corners.mean(1))


@functools.lru_cache(maxsize=4)
def _smoothed(sigma: float) -> dict[str, np.ndarray]:
    """The template volumes low-pass filtered for sampling at a coarser spacing (anti-aliasing)."""
    return {k: ndimage.gaussian_filter(v, sigma) for k, v in _template().volumes.items()}


def grid(size: int) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine (MNI mm) of a case grid: ``size`` cubed voxels of ``192 / size`` mm, centred on
    the brain.

    Example:
        >>> shape, affine = grid(48)
        >>> shape, float(affine[0, 0])
        ((48, 48, 48), 4.0)
    """
    shape = (size, size, size)
    spacing = FOV_MM / size
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = _template().centre - spacing * (size - 1) / 2
    return shape, affine


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], control: int, scale: float) -> np.ndarray:
    """A smooth random field on ``shape``: Gaussian values on a ``control``-cubed grid, cubic interpolation."""
    coarse = rng.normal(0.0, scale, (control,) * 3)
    return ndimage.zoom(coarse, [s / control for s in shape], order=3, mode="nearest", grid_mode=True)


def make_case(split: str, index: int, size: int = 48, seed: int = 0) -> Case:
    """One case, named ``mni_tr000`` (training) or ``mni_ts000`` (test).

    Args:
        split: ``"train"`` or ``"test"`` (independent random streams).
        index: case number within the split.
        size: voxels per axis; the spacing is ``192 / size`` mm.
        seed: dataset seed.

    Example:
        >>> case = make_case("train", 0, size=24)
        >>> case.image.shape, sorted(np.unique(case.label).tolist())
        ((24, 24, 24), [0, 1, 2, 3])
    """
    rng = np.random.default_rng([seed, _SPLITS[split], index])
    template = _template()
    shape, affine = grid(size)
    sources = _smoothed(round(0.4 * affine[0, 0] / _SOURCE_MM, 3))

    # where each output voxel samples the template: random affine about the brain centre + elastic field
    points = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ points + affine[:3, 3:4]
    rotation = Rotation.from_euler("xyz", rng.uniform(-10, 10, 3), degrees=True).as_matrix()
    linear = rotation @ np.diag(rng.uniform(0.92, 1.08, 3))
    centre = template.centre[:, None]
    source = centre + linear @ (world - centre) + rng.uniform(-4, 4, (3, 1))
    displacement_mm = rng.uniform(2.0, 4.0)
    source += np.stack([_smooth_field(rng, shape, 5, displacement_mm).ravel() for _ in range(3)])
    voxels = np.linalg.solve(template.affine[:3, :3], source - template.affine[:3, 3:4])
    sample = {k: ndimage.map_coordinates(v, voxels, order=1).reshape(shape) for k, v in sources.items()}

    brain, gm, wm = (np.clip(sample[k], 0, 1) for k in ("brain", "gm", "wm"))
    csf = np.clip(brain - gm - wm, 0, 1)
    label = np.argmax(np.stack([1 - brain, csf, gm, wm]), axis=0).astype(np.uint8)

    t1 = sample["t1"] + (rng.normal(0, 0.03, 3)[:, None, None, None] * np.stack([csf, gm, wm])).sum(0)
    t1 = np.clip(t1, 0, None) ** np.exp(rng.normal(0, 0.2))  # contrast: per-tissue shifts and a gamma
    t1 = t1 * np.exp(_smooth_field(rng, shape, 3, 0.15))  # bias field
    sigma = rng.uniform(0.01, 0.04)
    t1 = np.hypot(t1 + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))  # Rician noise
    image = (t1 * rng.uniform(300, 1500)).astype(np.float32)
    return Case(f"mni_{'tr' if split == 'train' else 'ts'}{index:03d}", image, label, affine)


def header(size: int, seed: int) -> dict:
    """``dataset.json`` entries describing an MNI dataset, with source and licence.

    Example:
        >>> header(48, 0)["labels"]["1"]
        'CSF'
    """
    spacing = FOV_MM / size
    return {
        "name": "pconv3d-mni",
        "description": (
            f"Brain T1 cases ({size}^3 voxels of {spacing:g} mm) made from the MNI ICBM152 2009a nonlinear "
            "symmetric template and its GM/WM probability maps bundled with nilearn, through random smooth "
            "deformations, contrast changes, bias fields and Rician noise; CSF = brain minus GM and WM. "
            "Generated by `pconv3d data --kind mni`."
        ),
        "reference": (
            "Fonov et al., NeuroImage 47 (2009) S102 and 54 (2011) 313-327; Collins et al., 1999. "
            "http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009"
        ),
        "licence": LICENCE,
        "release": f"nilearn {nilearn.__version__}",
        "tensorImageSize": "3D",
        "modality": {"0": "T1"},
        "labels": LABELS,
    }
