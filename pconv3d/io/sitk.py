"""Image file I/O for MONAI: a SimpleITK reader/writer pair and safe volume writing.

MONAI's own ``ITKReader``/``ITKWriter`` need the ``itk`` package; :class:`SimpleITKReader` and
:class:`SimpleITKWriter` give the same conventions with ``SimpleITK`` (already a pconv3d dependency):

* arrays are indexed ``(x, y, z[, c])`` like ``NibabelReader`` (SimpleITK's own arrays are ``(z, y, x)``);
* the affine is in RAS world coordinates like NIfTI/nibabel (ITK stores LPS: the first two rows flip).

So ``LoadImage(reader=SimpleITKReader())`` and ``LoadImage(reader="NibabelReader")`` give the same array and
affine for the same NIfTI file, and ``.mha``/``.mhd``/``.nrrd`` files load the same way.

Writing never leaves a half-written file and never replaces an existing one unless asked
(:func:`atomic_write`): the file is written into a temporary folder next to the target and moved in place with
``os.replace``.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from monai.config import DtypeLike, NdarrayOrTensor, PathLike
from monai.data import ImageReader, ImageWriter, NibabelWriter
from monai.data.utils import affine_to_spacing, is_supported_format, orientation_ras_lps, to_affine_nd
from monai.utils import MetaKeys, SpaceKeys, convert_data_type, ensure_tuple

__all__ = [
    "SUFFIXES",
    "NIFTI_SUFFIXES",
    "NON_NIFTI_SUFFIXES",
    "SimpleITKReader",
    "SimpleITKWriter",
    "atomic_write",
    "save_volume",
    "check_nifti_complete",
]

NIFTI_SUFFIXES = ("nii", "nii.gz")
NON_NIFTI_SUFFIXES = ("mha", "mhd", "nrrd", "nhdr")
# formats SimpleITK reads and writes that carry full geometry (spacing, direction, origin)
SUFFIXES = (*NIFTI_SUFFIXES, *NON_NIFTI_SUFFIXES)


def _is_nifti(path: PathLike) -> bool:
    return is_supported_format(path, NIFTI_SUFFIXES)


def _itk_reason(err: RuntimeError) -> str:
    """The useful part of a SimpleITK exception (its first line is only the C++ source location)."""
    prefix = re.compile(r"^(sitk::ERROR|ITK ERROR: \w+\(0x[0-9a-f]+\)):\s*")
    lines = [prefix.sub("", s).strip() for s in str(err).splitlines()[1:]]
    return "; ".join(s for s in lines if s)[:300] or str(err)


def check_nifti_complete(path: PathLike) -> None:
    """Raise ``ValueError`` if a NIfTI file holds fewer data bytes than its header announces.

    ITK's NIfTI reader zero-fills a truncated file without complaint, so this check runs before SimpleITK reads
    one. For ``.nii.gz`` the gzip trailer's size field is compared first and the stream is only decompressed
    when it disagrees, so complete files cost one header read.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.

    Example:
        >>> check_nifti_complete("case_000.nii.gz")  # doctest: +SKIP
    """
    try:
        header = nib.load(path).header
    except Exception as e:  # nibabel raises several types for damaged headers
        raise ValueError(f"{path}: not a readable NIfTI file ({e})") from None
    expected = int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    if str(path).endswith(".gz"):
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            if int.from_bytes(f.read(4), "little") == expected % 2**32:  # gzip ISIZE: length mod 2**32
                return
        size = 0
        try:
            with gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    size += len(chunk)
        except (EOFError, OSError, gzip.BadGzipFile) as e:
            raise ValueError(f"{path}: truncated or corrupt compressed NIfTI file ({e})") from None
    else:
        size = os.path.getsize(path)
    if size < expected:
        raise ValueError(f"{path}: truncated NIfTI file, header announces {expected} bytes, file holds {size}")


def _affine(img: sitk.Image, lps_to_ras: bool) -> np.ndarray:
    """4x4 (for up to 3 spatial dims) affine of a SimpleITK image: direction @ diag(spacing), origin."""
    dim = img.GetDimension()
    sr = min(dim, 3)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)[:sr, :sr]
    affine = np.eye(sr + 1)
    affine[:sr, :sr] = direction @ np.diag(np.asarray(img.GetSpacing(), dtype=np.float64)[:sr])
    affine[:sr, -1] = np.asarray(img.GetOrigin(), dtype=np.float64)[:sr]
    return to_affine_nd(3, orientation_ras_lps(affine)) if lps_to_ras else to_affine_nd(3, affine)


class SimpleITKReader(ImageReader):
    """Load NIfTI, MetaImage (``.mha``/``.mhd``) and NRRD files with SimpleITK, for ``monai.transforms.LoadImage``.

    The array is indexed ``(x, y, z)`` (``(x, y, z, c)`` for vector or 4D images, channel last) and the affine is
    RAS, both as with MONAI's ``NibabelReader``; the array keeps the file's dtype (``LoadImage`` casts to its
    ``dtype`` argument, float32 unless ``dtype=None``). Several files are stacked as channels (first axis) and
    must share shape and affine.

    Args:
        channel_dim: channel axis of the loaded array, written to ``original_channel_dim`` for
            ``EnsureChannelFirst``; ``None`` means no channel for scalar 3D images and the last axis otherwise.
        affine_lps_to_ras: convert ITK's LPS affine to RAS (as NIfTI and ``NibabelReader``). Default ``True``.
        suffixes: the suffixes :meth:`verify_suffix` accepts; ``LoadImage`` picks a reader by suffix, so
            ``suffixes=NON_NIFTI_SUFFIXES`` leaves NIfTI files to ``NibabelReader``. Default :data:`SUFFIXES`.
        kwargs: passed to ``SimpleITK.ReadImage`` (for example ``outputPixelType``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read as an image, or a NIfTI file is truncated.

    Example:
        >>> from monai.transforms import LoadImage
        >>> img = LoadImage(reader=SimpleITKReader(), image_only=True)("scan.mha")  # doctest: +SKIP
        >>> img.affine  # RAS, same as NibabelReader for NIfTI files  # doctest: +SKIP
    """

    def __init__(
        self,
        channel_dim: int | None = None,
        affine_lps_to_ras: bool = True,
        suffixes: Sequence[str] = SUFFIXES,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.channel_dim = channel_dim
        self.affine_lps_to_ras = affine_lps_to_ras
        self.suffixes = tuple(suffixes)
        self.kwargs = kwargs

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """Whether every file in ``filename`` has one of this reader's ``suffixes``."""
        return is_supported_format(filename, self.suffixes)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> sitk.Image | list[sitk.Image]:
        """Read one file (returns a ``SimpleITK.Image``) or several (returns a list).

        Args:
            data: file name or list of file names.
            kwargs: passed to ``SimpleITK.ReadImage``, overriding the constructor's ``kwargs``.
        """
        options = {**self.kwargs, **kwargs}
        self.filenames = [str(n) for n in ensure_tuple(data)]  # for error messages in get_data
        images = []
        for name in self.filenames:
            path = Path(name)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such image file")
            if _is_nifti(path):
                check_nifti_complete(path)
            try:
                images.append(sitk.ReadImage(str(path), **options))
            except RuntimeError as e:
                raise ValueError(f"{path}: cannot read image ({_itk_reason(e)})") from None
        return images if len(images) > 1 else images[0]

    def get_data(self, img: sitk.Image | Sequence[sitk.Image]) -> tuple[np.ndarray, dict]:
        """Array ``(x, y, z[, c])`` and metadata (``affine``, ``original_affine``, ``spatial_shape``, ``spacing``,
        ``space``, ``original_channel_dim`` and the file's own header fields) of image(s) from :meth:`read`."""
        images = [img] if isinstance(img, sitk.Image) else list(img)  # an Image is iterable (its pixels)
        arrays, metas = zip(*(self._one(i) for i in images))
        meta = dict(metas[0])
        names = getattr(self, "filenames", [f"image {i}" for i in range(len(arrays))])
        for name, m in zip(names[1:], metas[1:]):
            if not np.array_equal(m[MetaKeys.SPATIAL_SHAPE], meta[MetaKeys.SPATIAL_SHAPE]) or not np.allclose(
                m[MetaKeys.AFFINE], meta[MetaKeys.AFFINE], atol=1e-4
            ):
                raise ValueError(
                    f"{name}: shape {tuple(m[MetaKeys.SPATIAL_SHAPE])} or affine differs from {names[0]} "
                    f"(shape {tuple(meta[MetaKeys.SPATIAL_SHAPE])}); cannot stack them as channels"
                )
        if len(arrays) == 1:
            return arrays[0], meta
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays), meta

    def _one(self, img: sitk.Image) -> tuple[np.ndarray, dict]:
        array = sitk.GetArrayViewFromImage(img)
        # SimpleITK's array is (z, y, x[, c]); reverse the spatial (and 4th/5th image) axes, keep components last
        n = img.GetDimension()
        order = tuple(reversed(range(n))) + ((n,) if img.GetNumberOfComponentsPerPixel() > 1 else ())
        data = np.array(array).transpose(order)
        sr = min(n, 3)
        meta: dict = {k: img.GetMetaData(k) for k in img.GetMetaDataKeys() if not k.startswith("ITK_")}
        meta[MetaKeys.AFFINE] = _affine(img, self.affine_lps_to_ras)
        meta[MetaKeys.ORIGINAL_AFFINE] = meta[MetaKeys.AFFINE].copy()
        meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(img.GetSize()[:sr])
        meta["spacing"] = np.asarray(img.GetSpacing()[:sr])
        meta[MetaKeys.SPACE] = SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS
        if self.channel_dim is not None:
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = self.channel_dim
        else:
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan") if data.ndim == sr else -1
        return data, meta


def atomic_write(path: PathLike, write: Callable[[Path], Any], overwrite: bool = False) -> Path:
    """Write a file through ``write(tmp_path)`` and move it to ``path`` only once it is complete.

    ``write`` receives a path with the final file name inside a fresh temporary folder next to ``path`` (same
    file system, so ``os.replace`` is atomic). Every file it creates there is moved next to ``path`` (companion
    files such as the ``.raw`` of a ``.mhd`` first, ``path`` itself last); on any error nothing is moved and the
    temporary folder is removed.

    Args:
        path: destination file.
        write: callable writing the file to the path it is given.
        overwrite: replace existing files; when ``False`` an existing destination raises ``FileExistsError``.

    Returns:
        ``path`` as a ``Path``.

    Example:
        >>> atomic_write("out/labels.json", lambda p: p.write_text("{}"))  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; not overwriting it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        try:
            write(tmp / path.name)
        except OSError as e:
            if e.errno is not None and e.filename is None:  # a failed write() names no file: name this one
                e.filename = str(path)
            raise
        produced = sorted(tmp.iterdir(), key=lambda p: p.name == path.name)
        if path.name not in {p.name for p in produced}:
            raise RuntimeError(f"{path}: the writer produced no file")
        clashes = [str(path.parent / p.name) for p in produced if (path.parent / p.name).exists()]
        if clashes and not overwrite:
            raise FileExistsError(f"{', '.join(clashes)}: already exists; not overwriting it")
        for p in produced:
            os.replace(p, path.parent / p.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


class SimpleITKWriter(ImageWriter):
    """Write images with SimpleITK (NIfTI, ``.mha``, ``.mhd``, ``.nrrd``, ...), for ``monai.transforms.SaveImage``.

    Follows MONAI's ``ImageWriter`` protocol (``set_data_array``, ``set_metadata``, ``write``). The RAS affine of
    the data (``meta["affine"]``) becomes ITK's LPS spacing, direction and origin; files are written atomically
    and an existing file is only replaced with ``overwrite=True``.

    Args:
        output_dtype: dtype on disk; ``None`` keeps the data's dtype (bool is written as uint8).
        affine_lps_to_ras: the affine is RAS (MONAI's convention) and is converted to ITK's LPS. Default ``True``.
        overwrite: replace an existing file. Default ``False`` (``FileExistsError``).
        compression: compress the pixel data where the format allows it (``.nii`` is never compressed).
        kwargs: extra attributes, as for ``ImageWriter``.

    Example:
        >>> from monai.transforms import SaveImage
        >>> SaveImage(output_ext=".mha", writer=SimpleITKWriter, separate_folder=False)(img)  # doctest: +SKIP
        >>> w = SimpleITKWriter(output_dtype=np.int16)
        >>> w.set_data_array(np.zeros((1, 4, 5, 6)), channel_dim=0)
        >>> w.set_metadata({"affine": np.diag([2.0, 2.0, 3.0, 1.0])})
        >>> w.write("volume.nrrd")  # doctest: +SKIP
    """

    def __init__(
        self,
        output_dtype: DtypeLike = None,
        affine_lps_to_ras: bool = True,
        overwrite: bool = False,
        compression: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            output_dtype=output_dtype,
            affine_lps_to_ras=affine_lps_to_ras,
            overwrite=overwrite,
            compression=compression,
            affine=None,
            is_vector=False,
            **kwargs,
        )

    def set_data_array(
        self, data_array: NdarrayOrTensor, channel_dim: int | None = 0, squeeze_end_dims: bool = True, **kwargs: Any
    ) -> None:
        """Store ``data_array`` channel-last; one channel is written as a scalar image, several as a vector image.

        Args:
            data_array: array with its channel axis at ``channel_dim`` (``None``: no channel axis).
            channel_dim: channel axis. Default 0 (MONAI's channel-first).
            squeeze_end_dims: drop trailing singleton axes (a single channel, then singleton spatial axes).
            kwargs: ``spatial_ndim`` (default 3), as for ``ImageWriter.convert_to_channel_last``.
        """
        channels = data_array.shape[channel_dim] if channel_dim is not None else 1
        self.data_obj = self.convert_to_channel_last(
            data=data_array,
            channel_dim=channel_dim,
            squeeze_end_dims=squeeze_end_dims,
            spatial_ndim=kwargs.pop("spatial_ndim", 3),
        )
        self.is_vector = channels > 1
        if not self.is_vector and self.data_obj.shape[-1:] == (1,) and self.data_obj.ndim > 3:
            self.data_obj = self.data_obj[..., 0]

    def set_metadata(self, meta_dict: Mapping | None = None, resample: bool = True, **options: Any) -> None:
        """Take the affine from ``meta_dict``; resample to ``original_affine`` only when ``resample`` and it differs.

        Args:
            meta_dict: metadata with optional ``affine``, ``original_affine`` and ``spatial_shape``.
            resample: resample the data to ``original_affine``/``spatial_shape`` (as MONAI's writers do).
            options: ``mode``, ``padding_mode``, ``align_corners``, ``dtype`` for ``ImageWriter.resample_if_needed``.
        """
        original_affine, affine, spatial_shape = self.get_meta_info(meta_dict)
        if self.output_dtype is None:
            self.output_dtype = self.data_obj.dtype
        same_grid = (
            original_affine is None
            or affine is None
            or (
                np.allclose(convert_data_type(affine, np.ndarray)[0], convert_data_type(original_affine, np.ndarray)[0])
                and (spatial_shape is None or tuple(np.asarray(spatial_shape)) == tuple(self.data_obj.shape[:3]))
            )
        )
        if not resample or same_grid:
            # no resampling: keep the data bit for bit (resample_if_needed always goes through float32)
            self.affine = affine if affine is not None else original_affine
            return
        self.data_obj, self.affine = self.resample_if_needed(
            data_array=self.data_obj,
            affine=affine,
            target_affine=original_affine,
            output_spatial_shape=spatial_shape,
            mode=options.pop("mode", "bilinear"),
            padding_mode=options.pop("padding_mode", "border"),
            align_corners=options.pop("align_corners", False),
            dtype=options.pop("dtype", np.float64),
        )

    def write(self, filename: PathLike, verbose: bool = False, **kwargs: Any) -> None:
        """Write the image atomically to ``filename`` (format from its suffix).

        Args:
            filename: destination file.
            verbose: log the file name.
            kwargs: ``overwrite``/``compression`` override the constructor's values for this call.
        """
        super().write(filename, verbose=verbose)
        image = self.create_backend_obj(
            self.data_obj,
            is_vector=self.is_vector,
            affine=self.affine,
            dtype=self.output_dtype,
            affine_lps_to_ras=self.affine_lps_to_ras,
        )
        compression = kwargs.pop("compression", self.compression)
        atomic_write(
            filename,
            lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=compression),
            overwrite=kwargs.pop("overwrite", self.overwrite),
        )

    @classmethod
    def create_backend_obj(
        cls,
        data_array: NdarrayOrTensor,
        is_vector: bool = False,
        affine: NdarrayOrTensor | None = None,
        dtype: DtypeLike = None,
        affine_lps_to_ras: bool = True,
        **kwargs: Any,
    ) -> sitk.Image:
        """A ``SimpleITK.Image`` from a channel-last array ``(x, y, z[, c])`` and its RAS affine.

        Args:
            data_array: the array, channel-last when ``is_vector``.
            is_vector: the last axis holds the components of a vector image.
            affine: RAS (or LPS, see ``affine_lps_to_ras``) affine; identity when ``None``.
            dtype: dtype on disk; ``None`` keeps the array's (bool becomes uint8).
            affine_lps_to_ras: convert the RAS affine to ITK's LPS.
            kwargs: unused, accepted for ``ImageWriter`` compatibility.
        """
        data = np.asarray(convert_data_type(data_array, np.ndarray)[0])
        if dtype is not None:
            data = data.astype(np.dtype(dtype), copy=False)
        if data.dtype == np.bool_:
            data = data.astype(np.uint8)
        spatial = data.ndim - int(is_vector)
        order = tuple(reversed(range(spatial))) + ((spatial,) if is_vector else ())
        try:
            image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(order)), isVector=is_vector)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"SimpleITK cannot store an array of dtype {data.dtype}: {e}") from None
        d = image.GetDimension()
        mat = np.eye(4) if affine is None else to_affine_nd(3, convert_data_type(affine, np.ndarray)[0])
        if affine_lps_to_ras:
            mat = orientation_ras_lps(mat)
        full = np.eye(d + 1)  # 4D images (e.g. time) keep unit spacing along the extra axes
        sr = min(d, 3)
        full[:sr, :sr], full[:sr, -1] = mat[:sr, :sr], mat[:sr, -1]
        spacing = affine_to_spacing(full, r=d)
        image.SetSpacing(spacing.tolist())
        image.SetOrigin(full[:d, -1].tolist())
        image.SetDirection((full[:d, :d] / spacing).ravel().tolist())
        return image


def save_volume(
    array: NdarrayOrTensor,
    affine: NdarrayOrTensor,
    path: PathLike,
    dtype: DtypeLike = None,
    channel_dim: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write one volume atomically: NIfTI through MONAI's ``NibabelWriter``, other formats through
    :class:`SimpleITKWriter`.

    Args:
        array: the volume, ``(x, y, z)`` or with a channel axis at ``channel_dim``.
        affine: its RAS affine (4x4).
        path: destination; the suffix picks the format.
        dtype: dtype on disk; ``None`` keeps the array's.
        channel_dim: channel axis of ``array`` (``None``: none).
        overwrite: replace an existing file (default: ``FileExistsError``).

    Returns:
        ``path`` as a ``Path``.

    Example:
        >>> save_volume(np.zeros((8, 8, 8), np.uint8), np.eye(4), "label.nii.gz")  # doctest: +SKIP
    """
    array = convert_data_type(array, np.ndarray)[0]
    dtype = array.dtype if dtype is None else dtype
    meta = {MetaKeys.AFFINE: convert_data_type(affine, np.ndarray)[0]}
    if not _is_nifti(path):
        writer = SimpleITKWriter(output_dtype=dtype, overwrite=overwrite)
        writer.set_data_array(array, channel_dim=channel_dim)
        writer.set_metadata(meta, resample=False)
        writer.write(path)
        return Path(path)
    nifti = NibabelWriter(output_dtype=dtype)
    nifti.set_data_array(array, channel_dim=channel_dim)
    # set the affine directly: set_metadata would pass the data through float32 even without resampling
    nifti.affine = meta[MetaKeys.AFFINE]
    return atomic_write(path, nifti.write, overwrite=overwrite)
