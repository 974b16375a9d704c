"""``SaveVolumed``: write predictions next to nothing they came from, atomically, in the input's format.

Why not MONAI's ``SaveImaged``: it writes one output format for every input (``output_ext``) and its NIfTI
writer replaces files in place without asking; here each output keeps its input's format (MetaImage in,
MetaImage out), is written atomically, and never replaces an input or, without ``overwrite``, an earlier output.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection, PathLike
from monai.data import MetaTensor
from monai.transforms import MapTransform

from pconv3d.io.sitk import SUFFIXES, save_volume

__all__ = ["SaveVolumed", "output_path"]


def output_path(source: PathLike, output_dir: PathLike, postfix: str) -> Path:
    """``output_dir/<stem>_<postfix><suffix>``, keeping the source's volume suffix (``.nii.gz``, ``.mha``, ...)."""
    name = Path(source).name
    suffix = next((f".{s}" for s in sorted(SUFFIXES, key=len, reverse=True) if name.lower().endswith(f".{s}")), ".nii.gz")
    return Path(output_dir) / f"{name[: len(name) - len(suffix)]}_{postfix}{suffix}"


class SaveVolumed(MapTransform):
    """Save each key's channel-first ``MetaTensor`` as one file per case, atomically.

    The file name comes from the source image (``meta_key``'s ``filename_or_obj``); the affine is the
    tensor's own (after ``Invertd``: the original image's). A destination that is one of the case's input
    files is refused, whatever ``overwrite`` says.

    Args:
        keys: keys to save.
        output_dir: output folder.
        output_postfix: appended to the source stem (``case_seg.nii.gz``).
        output_dtype: dtype on disk (e.g. ``np.uint8`` for labels).
        squeeze_channel: drop a single channel axis (label maps); otherwise channels become the last axis.
        source_key: key whose metadata names the source file.
        overwrite: replace existing outputs.
        allow_missing_keys: skip absent keys.

    Example::

        >>> save = SaveVolumed("pred", "out", output_postfix="seg", output_dtype=np.uint8)
        >>> save(case)  # doctest: +SKIP
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: PathLike,
        output_postfix: str = "seg",
        output_dtype: Any = np.float32,
        squeeze_channel: bool = True,
        source_key: str = "image",
        overwrite: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        self.output_dtype = output_dtype
        self.squeeze_channel = squeeze_channel
        self.source_key = source_key
        self.overwrite = overwrite

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        source = d[self.source_key].meta["filename_or_obj"]
        inputs = {Path(v.meta["filename_or_obj"]).resolve() for v in d.values()
                  if isinstance(v, MetaTensor) and v.meta.get("filename_or_obj")}
        for key in self.key_iterator(d):
            value = d[key]
            path = output_path(source, self.output_dir, self.output_postfix)
            if path.resolve() in inputs:
                raise ValueError(f"{path}: output would overwrite an input file; choose another output folder")
            array = value.detach().cpu().numpy()
            if self.squeeze_channel and array.shape[0] == 1:
                save_volume(array[0], value.affine, path, dtype=self.output_dtype, overwrite=self.overwrite)
            else:
                save_volume(np.moveaxis(array, 0, -1), value.affine, path, dtype=self.output_dtype,
                            channel_dim=-1, overwrite=self.overwrite)
            d[f"{key}_path"] = str(path)
        return d
