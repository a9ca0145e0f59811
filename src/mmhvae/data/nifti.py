"""Reading and writing NIfTI volumes with errors that name the file and the problem.

Volumes are read as float32 ``(X, Y, Z)`` arrays in voxel order together with their 4x4 voxel-to-world
affine and header, so inference can write its outputs with the input's geometry untouched. Writes
are atomic (:func:`mmhvae.atomic.atomic_write`) and deterministic: the gzip stream carries no
timestamp or file name, so the same array, affine and header give byte-identical files.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np

from mmhvae.atomic import atomic_write_bytes

# gzip level 1 is ~4x faster than nibabel's default level 6 on float images for a few percent
# larger files, which matters when the built-in cohort writes hundreds of volumes.
DEFAULT_COMPRESSLEVEL = 1


from mmhvae.errors import NiftiError  # noqa: E402,F401 - defined with the other project errors


def _load(path: Path) -> nib.Nifti1Image:
    if not path.exists():
        raise NiftiError(f"{path}: file not found")
    if path.is_dir():
        raise NiftiError(f"{path}: is a folder, expected a NIfTI file (.nii or .nii.gz)")
    try:
        image = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
        raise NiftiError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise NiftiError(f"{path}: is a {type(image).__name__}, expected a NIfTI image")
    return image


def _as_3d(shape: tuple[int, ...], path: Path) -> tuple[int, ...]:
    # A trailing singleton 4th dimension (common from some converters) is a 3D volume in disguise.
    if len(shape) == 4 and shape[3] == 1:
        return shape[:3]
    if len(shape) != 3:
        raise NiftiError(
            f"{path}: image is {len(shape)}D with shape {tuple(shape)}, expected a 3D volume "
            "(split 4D series into one file per modality)"
        )
    return shape


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Read a 3D NIfTI volume.

    Returns ``(data, affine, header)``: ``data`` float32 of shape ``(X, Y, Z)`` with the scaling
    (``scl_slope``/``scl_inter``) applied, ``affine`` float64 ``(4, 4)``, ``header`` a copy of the
    file's header. Raises :class:`NiftiError` naming the file for a missing or corrupt file, a 4D
    image, or NaN/Inf voxels.
    """
    path = Path(path)
    image = _load(path)
    shape = _as_3d(tuple(int(s) for s in image.shape), path)
    try:
        data = np.asarray(image.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as exc:  # truncated gzip streams only fail when the voxels are read
        raise NiftiError(f"{path}: voxel data unreadable, file truncated or corrupt ({exc})") from None
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise NiftiError(f"{path}: {bad} non-finite voxels (NaN or Inf); fix or mask them before use")
    return data, np.asarray(image.affine, dtype=np.float64), image.header.copy()


def read_labels(path: str | Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Read a label map or mask: like :func:`read_volume` but int16 ``(X, Y, Z)``, values rounded."""
    data, affine, header = read_volume(path)
    return np.rint(data).astype(np.int16), affine, header


def _header_for(array: np.ndarray, affine: np.ndarray, header: Optional[nib.Nifti1Header]) -> nib.Nifti1Image:
    if header is None:
        image = nib.Nifti1Image(array, affine)
        # sform/qform code 1 ("scanner"), millimetres: fixed values so files are reproducible.
        image.set_sform(affine, code=1)
        image.set_qform(affine, code=1)
        image.header.set_xyzt_units("mm", "sec")
    else:
        # Nifti2 or foreign headers are not carried over: only a NIfTI-1 header maps field by field.
        nifti1 = isinstance(header, nib.Nifti1Header) and not isinstance(header, nib.Nifti2Header)
        image = nib.Nifti1Image(array, affine, header.copy() if nifti1 else None)
        if not nifti1:
            image.header.set_xyzt_units("mm", "sec")
    image.header.set_data_dtype(array.dtype)
    # The array is written as-is; an inherited scaling would silently rescale it on read.
    image.header.set_slope_inter(1.0, 0.0)
    return image


def _three_d(path: str | Path, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        raise NiftiError(f"{path}: expected a 3D array to write, got shape {array.shape}")
    return array


def _write(
    path: Path, array: np.ndarray, affine: np.ndarray, header: Optional[nib.Nifti1Header], compresslevel: int
) -> None:
    """``array`` (already of its file data type) as NIfTI at ``path``, gzip-compressed for ``.gz``, atomically."""
    data = _header_for(array, np.asarray(affine, dtype=np.float64), header).to_bytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=compresslevel, mtime=0)
    elif not path.name.endswith(".nii"):
        raise NiftiError(f"{path}: output name must end in .nii or .nii.gz")
    atomic_write_bytes(path, data)


def write_volume(
    path: str | Path,
    array: np.ndarray,
    affine: np.ndarray,
    header: Optional[nib.Nifti1Header] = None,
    compresslevel: int = DEFAULT_COMPRESSLEVEL,
    dtype: type = np.float32,
) -> None:
    """Write ``array`` ``(X, Y, Z)`` as NIfTI (gzip if the name ends in ``.gz``), atomically.

    The data type is float32 unless ``dtype`` names an integer type (for integer-valued data such as
    scanner output: half the bytes to compress); integer arrays must then fit that type.
    ``header`` (e.g. the input's, at inference) is copied with its data type and scaling reset, so
    geometry fields and descriptions carry over.
    """
    array = _three_d(path, array)
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        rounded = np.rint(array)
        if rounded.size and (rounded.min() < info.min or rounded.max() > info.max):
            raise NiftiError(f"{path}: values {rounded.min()}..{rounded.max()} do not fit {dtype.name}")
        array = rounded.astype(dtype)
    else:
        array = array.astype(np.float32)
    _write(Path(path), array, affine, header, compresslevel)


def write_labels(
    path: str | Path, array: np.ndarray, affine: np.ndarray, header: Optional[nib.Nifti1Header] = None,
    compresslevel: int = DEFAULT_COMPRESSLEVEL,
) -> None:
    """Write a label map or mask ``(X, Y, Z)`` as uint8 NIfTI, atomically (values must be 0..255)."""
    array = _three_d(path, array)
    if array.size and (array.min() < 0 or array.max() > 255):
        raise NiftiError(f"{path}: label values must lie in 0..255, got {array.min()}..{array.max()}")
    _write(Path(path), array.astype(np.uint8), affine, header, compresslevel)


__all__ = ["NiftiError", "read_volume", "read_labels", "write_volume", "write_labels"]
