"""Built-in datasets, written to disk as MSD-style folders: ``mni`` (brain MRI from the MNI152 template bundled
with nilearn, the default) and ``phantom`` (synthetic, for fast tests)."""

from __future__ import annotations

from pathlib import Path

from monai.config import PathLike

from pconv3d.data import mni, phantoms
from pconv3d.io.datalist import MARKER, write_dataset

__all__ = ["KINDS", "make_dataset", "mni", "phantoms"]

KINDS = {"mni": mni, "phantom": phantoms}
MIN_SIZE, MAX_SIZE = 16, 256


def make_dataset(
    kind: str,
    output: PathLike,
    n_train: int = 8,
    n_test: int = 4,
    size: int = 48,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Generate a dataset and write it to ``output`` (``imagesTr``, ``labelsTr``, ``imagesTs``, ``labelsTs``,
    ``dataset.json``); deterministic for given arguments.

    Args:
        kind: ``"mni"`` or ``"phantom"``.
        output: destination folder: missing, empty, or a dataset generated earlier with the same arguments
            (``overwrite`` for others).
        n_train: number of training cases (at least 1).
        n_test: number of test cases (0 or more).
        size: voxels per axis (``mni``: ``size``-cubed grid of ``192 / size`` mm; ``phantom``: in-plane).
        seed: dataset seed; training and test cases use independent streams of it.
        overwrite: replace a dataset generated with other arguments; allow writing into a non-empty folder that
            is not a generated dataset.

    Returns:
        Path of the written ``dataset.json``.

    Raises:
        ValueError: bad arguments.
        FileExistsError: ``output`` is a file, or (without ``overwrite``) a dataset generated with other
            arguments or a non-empty foreign folder.

    Example:
        >>> make_dataset("phantom", "data/phantom", n_train=2, n_test=1, size=32)  # doctest: +SKIP
        PosixPath('data/phantom/dataset.json')
    """
    if kind not in KINDS:
        raise ValueError(f"dataset kind must be one of {sorted(KINDS)}, got {kind!r}")
    if n_train < 1 or n_test < 0:
        raise ValueError(f"need n_train >= 1 and n_test >= 0, got n_train={n_train}, n_test={n_test}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be between {MIN_SIZE} and {MAX_SIZE} voxels, got {size}")
    module = KINDS[kind]
    header = {
        **module.header(size, seed),
        MARKER: {"kind": kind, "n_train": n_train, "n_test": n_test, "size": size, "seed": seed},
    }
    # generators: write_dataset checks the output folder before any case is computed
    training = (module.make_case("train", i, size, seed) for i in range(n_train))
    test = (module.make_case("test", i, size, seed) for i in range(n_test))
    return write_dataset(output, training, test, header, overwrite=overwrite)
