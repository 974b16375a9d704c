"""Reading, writing and listing volumes: a SimpleITK reader/writer for MONAI, safe (atomic) writing, and
MSD-style datalists with checks that image, label and mask files agree."""

from pconv3d.io.datalist import (
    DATASET_JSON,
    KEYS,
    SECTIONS,
    Case,
    VolumeInfo,
    is_generated_dataset,
    load_datalist,
    load_folder,
    read_volume_info,
    validate_case,
    validate_datalist,
    write_datalist,
    write_dataset,
)
from pconv3d.io.sitk import (
    NIFTI_SUFFIXES,
    NON_NIFTI_SUFFIXES,
    SUFFIXES,
    SimpleITKReader,
    SimpleITKWriter,
    atomic_write,
    check_nifti_complete,
    save_volume,
)
from pconv3d.transforms.checks import grid_mismatch

__all__ = [
    "DATASET_JSON",
    "KEYS",
    "SECTIONS",
    "NIFTI_SUFFIXES",
    "NON_NIFTI_SUFFIXES",
    "SUFFIXES",
    "Case",
    "VolumeInfo",
    "SimpleITKReader",
    "SimpleITKWriter",
    "atomic_write",
    "check_nifti_complete",
    "grid_mismatch",
    "is_generated_dataset",
    "load_datalist",
    "load_folder",
    "read_volume_info",
    "save_volume",
    "validate_case",
    "validate_datalist",
    "write_datalist",
    "write_dataset",
]
