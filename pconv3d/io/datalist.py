"""Datasets on disk: MSD-style ``dataset.json`` datalists, folders of volumes, and checks that the image, label
and mask files of a case agree.

A datalist is a list of dicts with an ``image`` path and optional ``label`` and ``mask`` paths (a mask is a
validity mask: 1 = valid, 0 = missing), the format ``monai.data.Dataset`` and ``LoadImaged`` consume. In a
``dataset.json`` the lists live under ``training``, ``validation`` and ``test``; paths are relative to the file.
MSD's plain-string test entries (``"test": ["./imagesTs/a.nii.gz"]``) are read as ``{"image": ...}``.

:func:`write_dataset` writes a generated dataset (``imagesTr``/``labelsTr``/``imagesTs``/``labelsTs`` and a
``dataset.json`` tagged with a ``"pconv3d"`` entry of its settings); it refuses a non-empty folder that is not
such a dataset, or is one with other settings, unless ``overwrite=True`` and never deletes files it did not list
itself.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from monai.config import PathLike

from pconv3d.io.sitk import SUFFIXES, _affine, _is_nifti, _itk_reason, atomic_write, check_nifti_complete, save_volume
from pconv3d.transforms.checks import grid_mismatch

__all__ = [
    "KEYS",
    "SECTIONS",
    "DATASET_JSON",
    "VolumeInfo",
    "Case",
    "read_volume_info",
    "validate_case",
    "validate_datalist",
    "load_datalist",
    "load_folder",
    "write_datalist",
    "generated_dataset_settings",
    "is_generated_dataset",
    "write_dataset",
]

KEYS = ("image", "label", "mask")
SECTIONS = ("training", "validation", "test")
DATASET_JSON = "dataset.json"
MARKER = "pconv3d"  # top-level dataset.json entry that identifies a dataset written by write_dataset


class VolumeInfo(NamedTuple):
    """Geometry of a volume file: its path, array shape ``(x, y, z[, c])`` and RAS affine (4x4)."""

    path: Path
    shape: tuple[int, ...]
    affine: np.ndarray


class Case(NamedTuple):
    """One generated case: a name (file stem), image ``(x, y, z)``, integer label ``(x, y, z)``, RAS affine."""

    name: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


def read_volume_info(path: PathLike, read_data: bool = True) -> VolumeInfo:
    """Shape, affine and dtype of a volume file, with a clear error for a missing or unreadable one.

    Args:
        path: a NIfTI, MetaImage or NRRD file.
        read_data: also read the voxel data, so that truncated files are caught (headers alone can look fine).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not a readable image, or is truncated.

    Example:
        >>> read_volume_info("imagesTr/case_000.nii.gz").shape  # doctest: +SKIP
        (48, 48, 48)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    if _is_nifti(path):
        if read_data:
            check_nifti_complete(path)
        try:
            img = nib.load(path)
        except Exception as e:  # nibabel raises several types for damaged files
            raise ValueError(f"{path}: not a readable NIfTI file ({e})") from None
        return VolumeInfo(path, tuple(int(s) for s in img.shape), np.asarray(img.affine))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        # Execute() reads the data too (MetaImage and NRRD readers raise on truncated data)
        image = reader.Execute() if read_data else reader
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise ValueError(f"{path}: cannot read image ({_itk_reason(e)})") from None
    comps = reader.GetNumberOfComponents()
    shape = tuple(int(s) for s in reader.GetSize()) + ((comps,) if comps > 1 else ())
    return VolumeInfo(path, shape, _affine(image, lps_to_ras=True))


def _check_dims(info: VolumeInfo, key: str) -> None:
    """Images are 3D or 3D + channels (last axis); labels and masks are 3D (a trailing singleton axis is allowed)."""
    ok = len(info.shape) == 3 or (len(info.shape) == 4 and (key == "image" or info.shape[3] == 1))
    if not ok:
        expected = "(X, Y, Z) or (X, Y, Z, C)" if key == "image" else "(X, Y, Z)"
        raise ValueError(f"{info.path}: {key} must be a 3D volume {expected}, got shape {info.shape}")


def _check_affine(info: VolumeInfo) -> None:
    """A usable grid: a finite affine whose 3x3 part can be inverted (no zero voxel size, no collapsed axis)."""
    affine = np.asarray(info.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(
            f"{info.path}: the affine {np.round(affine[:3], 4).tolist()} maps no volume (a voxel size of 0 or "
            "a non-finite entry in the header); fix the file's header"
        )


def validate_case(item: Mapping[str, Any], keys: Sequence[str] = KEYS, read_data: bool = True) -> dict[str, VolumeInfo]:
    """Check that a case's files exist, are readable 3D volumes and share the image's grid (shape and affine).

    Args:
        item: a datalist entry, ``{"image": path, "label": path, "mask": path}`` (label and mask optional).
        keys: the keys to check; ``keys[0]`` must be present and is the reference grid.
        read_data: read voxel data too (catches truncated files).

    Returns:
        The :class:`VolumeInfo` of each checked key.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: a file is unreadable, not 3D, has a singular affine, or its grid differs from the image's
            (the message names both files and what differs).

    Example:
        >>> validate_case({"image": "img.nii.gz", "label": "seg.nii.gz"})  # doctest: +SKIP
    """
    ref_key = keys[0]
    if ref_key not in item:
        raise ValueError(f"datalist entry {dict(item)} has no '{ref_key}'")
    infos = {}
    for key in keys:
        if item.get(key) is None:
            continue
        info = read_volume_info(item[key], read_data=read_data)
        _check_dims(info, key)
        _check_affine(info)
        infos[key] = info
        ref = infos[ref_key]
        problem = grid_mismatch(info.shape[:3], info.affine, ref.shape[:3], ref.affine)
        if problem:
            raise ValueError(f"{info.path}: {key} does not match {ref_key} {ref.path}: {problem}")
    return infos


def validate_datalist(items: Iterable[Mapping[str, Any]], keys: Sequence[str] = KEYS, read_data: bool = True) -> None:
    """:func:`validate_case` for every entry; the first problem raises.

    Args:
        items: datalist entries.
        keys: keys to check, the first being the reference grid.
        read_data: read voxel data too.

    Example:
        >>> validate_datalist(load_datalist("data/dataset.json", "training"))  # doctest: +SKIP
    """
    for item in items:
        validate_case(item, keys=keys, read_data=read_data)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such datalist file")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object with {'/'.join(SECTIONS)} lists, got {type(doc).__name__}")
    return doc


def load_datalist(
    path: PathLike,
    section: str = "training",
    base_dir: PathLike | None = None,
    check_files: bool = True,
    required: Sequence[str] = ("image",),
) -> list[dict[str, str]]:
    """Read one section of an MSD-style ``dataset.json`` as a list of ``{"image", "label"?, "mask"?}`` dicts:
    paths joined to the base folder as MONAI's ``load_decathlon_datalist`` joins them (``mask`` too), after
    checks that name the entry at fault, and every listed file checked to exist.

    Args:
        path: the JSON file.
        section: ``training``, ``validation``, ``test`` or any other list in the file.
        base_dir: folder relative paths refer to; default the JSON file's folder.
        check_files: raise ``FileNotFoundError`` for a listed file that does not exist.
        required: keys every entry must give a file for (``("image", "label")`` for training); a key given as
            ``null`` counts as absent.

    Returns:
        Entries with absolute paths (other keys of each entry are kept as they are; ``null`` files dropped).

    Example:
        >>> train = load_datalist("data/dataset.json", "training")  # doctest: +SKIP
        >>> train[0]["image"]  # doctest: +SKIP
        '/abs/data/imagesTr/mni_000.nii.gz'
    """
    path = Path(path)
    doc = _read_json(path)
    if not isinstance(doc.get(section), list):
        lists = [k for k, v in doc.items() if isinstance(v, list)]
        raise ValueError(f"{path}: no '{section}' list (lists present: {lists or 'none'})")
    entries = []
    for i, entry in enumerate(doc[section]):  # clear errors first, naming the entry at fault
        where = f"{path}: {section}[{i}]"
        entry = {"image": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or "image" not in entry:
            raise ValueError(f"{where}: expected a path or a dict with 'image', got {entry!r}")
        for key in KEYS:
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise ValueError(f"{where}.{key}: expected a file path, got {entry[key]!r}")
        absent = [key for key in required if entry.get(key) is None]
        if absent:
            raise ValueError(f"{where}: no '{absent[0]}' file (a {section} case needs {' and '.join(required)}); "
                             f"got {entry!r}")
        entries.append({k: v for k, v in entry.items() if not (k in KEYS and v is None)})
    base = Path(base_dir if base_dir is not None else path.parent).resolve()
    items = []
    for i, entry in enumerate(entries):  # paths joined to the base as MONAI's load_decathlon_datalist joins them
        item = dict(entry)
        for key in KEYS:
            if key in item:
                item[key] = os.path.normpath(base / item[key])
                if check_files and not Path(item[key]).is_file():
                    raise FileNotFoundError(f"{path}: {section}[{i}].{key}: {item[key]} does not exist")
        items.append(item)
    return items


def _volume_stem(path: Path) -> str | None:
    """File name without a supported volume suffix, or ``None`` for other files."""
    name = path.name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.lower().endswith("." + suffix):
            return name[: -len(suffix) - 1]
    return None


def load_folder(folder: PathLike, mask_suffix: str = "_mask") -> list[dict[str, str]]:
    """A datalist of every volume in a folder, for inference; ``<name><mask_suffix>.<ext>`` is ``<name>``'s mask.

    Args:
        folder: the folder (not searched recursively; hidden files are skipped).
        mask_suffix: stem suffix of mask files; ``""`` treats every file as an image.

    Returns:
        ``[{"image": path, "mask": path?}, ...]`` sorted by file name.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: no volumes in it, two volumes of one name (``a.nii.gz`` and ``a.nrrd``: one of them would be
            left out), or a mask without its image.

    Example:
        >>> load_folder("scans/")  # doctest: +SKIP
        [{'image': '/abs/scans/a.nii.gz', 'mask': '/abs/scans/a_mask.nii.gz'}, {'image': '/abs/scans/b.mha'}]
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    stems = {p: _volume_stem(p) for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}
    volumes = {p: s for p, s in stems.items() if s is not None}
    if not volumes:
        raise ValueError(f"{folder}: no volumes ({', '.join('.' + s for s in SUFFIXES)}) in this folder")
    named: dict[str, Path] = {}
    for p, s in volumes.items():
        if s in named:
            raise ValueError(f"{named[s]} and {p.name}: two volumes named {s} in one folder; rename or move one "
                             "of them")
        named[s] = p
    is_mask = {p: bool(mask_suffix) and s.endswith(mask_suffix) for p, s in volumes.items()}
    images = {s: {"image": str(p.resolve())} for p, s in volumes.items() if not is_mask[p]}
    for p, s in volumes.items():
        if is_mask[p]:
            owner = s[: -len(mask_suffix)]
            if owner not in images:
                raise ValueError(f"{p}: mask file without an image named {owner}.<ext> in {folder}")
            images[owner]["mask"] = str(p.resolve())
    return list(images.values())


def _relative(path: str, base: Path) -> str:
    rel = os.path.relpath(path, base)
    return rel if rel.startswith("..") else f"./{Path(rel).as_posix()}"


def write_datalist(path: PathLike, doc: Mapping[str, Any], overwrite: bool = False) -> Path:
    """Write a ``dataset.json`` atomically, with the file paths of its lists relative to its folder.

    Args:
        path: destination JSON file.
        doc: the content; entries of ``training``/``validation``/``test`` are dicts (or strings) of paths.
        overwrite: replace an existing file.

    Returns:
        ``path`` as a ``Path``.

    Example:
        >>> write_datalist("d/dataset.json", {"training": [{"image": "/abs/d/imagesTr/a.nii.gz"}]})  # doctest: +SKIP
    """
    path = Path(path)
    base = path.parent.resolve()
    out = dict(doc)
    for section in SECTIONS:
        if section in out:
            out[section] = [
                _relative(str(e), base)
                if isinstance(e, (str, Path))
                else {k: _relative(str(v), base) if k in KEYS and v is not None else v for k, v in e.items()}
                for e in out[section]
            ]
    text = json.dumps(out, indent=2) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text), overwrite=overwrite)


def generated_dataset_settings(folder: PathLike) -> dict[str, Any] | None:
    """What :func:`write_dataset` recorded about the dataset in ``folder`` (for the built-in datasets: ``kind``,
    ``n_train``, ``n_test``, ``size``, ``seed``), or ``None`` when ``folder`` holds no dataset written by it.

    Example:
        >>> generated_dataset_settings("data/mni")["kind"]  # doctest: +SKIP
        'mni'
    """
    path = Path(folder) / DATASET_JSON
    try:
        marker = json.loads(path.read_text()).get(MARKER)
    except (OSError, ValueError, AttributeError):
        return None
    return marker if isinstance(marker, dict) else None


def is_generated_dataset(folder: PathLike) -> bool:
    """Whether ``folder`` holds a ``dataset.json`` written by :func:`write_dataset`.

    Example:
        >>> is_generated_dataset("data/mni")  # doctest: +SKIP
        True
    """
    return generated_dataset_settings(folder) is not None


def _listed_files(folder: Path) -> set[Path]:
    """Files a previous generated dataset in ``folder`` lists (inside ``folder`` only)."""
    doc = json.loads((folder / DATASET_JSON).read_text())
    root = folder.resolve()
    files = set()
    for section in SECTIONS:
        for entry in doc.get(section, []):
            entry = {"image": entry} if isinstance(entry, str) else entry
            if not isinstance(entry, dict):
                continue
            for key in KEYS:
                if isinstance(entry.get(key), str):
                    p = (folder / entry[key]).resolve()
                    if root in p.parents:
                        files.add(p)
    return files


def write_dataset(
    output: PathLike,
    training: Iterable[Case],
    test: Iterable[Case],
    header: Mapping[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write generated cases as an MSD-style dataset folder with a ``dataset.json``.

    Layout: ``imagesTr/<name>.nii.gz`` (float32), ``labelsTr/<name>.nii.gz`` (uint8), ``imagesTs``/``labelsTs``
    likewise, and ``dataset.json`` (``header`` plus ``numTraining``, ``numTest``, ``training``, ``test`` and a
    ``"pconv3d"`` entry). Everything is first written to a staging folder next to ``output`` and then moved in;
    ``dataset.json`` comes last, so an interrupted run leaves no datalist pointing at missing files.

    ``output`` may be missing, empty, or a dataset previously written here with the same ``"pconv3d"`` settings
    (it is written again). A dataset written with other settings is replaced only with ``overwrite=True`` (its
    listed files that the new dataset no longer has are removed). Any other non-empty folder needs
    ``overwrite=True`` too; files of ours then replace same-named files and nothing else there is touched. The
    cases are only generated (iterated) after these checks.

    Args:
        output: destination folder.
        training: training cases.
        test: test cases.
        header: top-level ``dataset.json`` entries (``name``, ``description``, ``labels``, ``modality``, ...);
            its ``"pconv3d"`` dict, if any, is extended.
        overwrite: replace a dataset generated with other settings; allow writing into a non-empty folder that
            is not a generated dataset.

    Returns:
        The path of the written ``dataset.json``.

    Raises:
        FileExistsError: ``output`` is a file, or without ``overwrite`` a dataset generated with other settings
            or a non-empty foreign folder.

    Example:
        >>> write_dataset("data/phantom", train_cases, test_cases, {"name": "phantom"})  # doctest: +SKIP
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output}: exists and is not a folder")
    found = generated_dataset_settings(output)
    ours = found is not None
    if output.is_dir() and any(output.iterdir()) and not ours and not overwrite:
        raise FileExistsError(
            f"{output}: folder is not empty and holds no dataset generated by pconv3d; "
            "choose another folder or pass --overwrite"
        )
    settings = dict(header.get(MARKER, {}))
    differences = [f"{k} {found.get(k)!r} -> {settings.get(k)!r}" for k in {**found, **settings}
                   if found.get(k) != settings.get(k)] if ours else []
    if differences and not overwrite:
        raise FileExistsError(
            f"{output}: holds a dataset generated with other settings ({', '.join(differences)}); "
            "choose another folder or pass --overwrite to replace it"
        )
    previous = _listed_files(output) if ours else set()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.staging-", dir=output.parent))
    try:
        lists: dict[str, list[dict[str, str]]] = {}
        moves: list[tuple[Path, Path]] = []  # (staged file, destination)
        for section, cases, folders in (("training", training, "Tr"), ("test", test, "Ts")):
            lists[section] = []
            for case in cases:
                entry = {}
                for key, array, dtype in (("image", case.image, np.float32), ("label", case.label, np.uint8)):
                    rel = Path(f"{key}s{folders}") / f"{case.name}.nii.gz"
                    moves.append((save_volume(array, case.affine, staging / rel, dtype), output / rel))
                    entry[key] = str(output / rel)
                lists[section].append(entry)
        doc = {
            **header,
            "numTraining": len(lists["training"]),
            "numTest": len(lists["test"]),
            **lists,
            MARKER: settings,
        }
        for src, dest in moves:  # only now, with every case generated, does `output` change
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
        json_path = write_datalist(output / DATASET_JSON, doc, overwrite=True)
        for stale in previous - {dest.resolve() for _, dest in moves}:
            stale.unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return json_path
