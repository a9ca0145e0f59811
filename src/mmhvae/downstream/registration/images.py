"""NIfTI <-> SimpleITK images at the same physical positions, and their atomic files.

Physical points are in LPS millimetres (ITK), not in the RAS of the NIfTI affine: the converters
:func:`nifti_to_sitk` and :func:`sitk_to_nifti` flip the first two axes, so an image converted
either way lands where ``SimpleITK.ReadImage`` of the same file would.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

import nibabel as nib
import numpy as np
import SimpleITK as sitk

# NIfTI affines are RAS, ITK physical space is LPS: negate x and y.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

def read_image(path: str | Path) -> sitk.Image:
    """Read a 3D image as float32 with SimpleITK; the error names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    except RuntimeError as exc:
        raise ValueError(f"{path}: cannot be read as an image ({str(exc).strip().splitlines()[-1]})") from None
    if image.GetDimension() != 3:
        raise ValueError(f"{path}: expected a 3D image, got {image.GetDimension()}D")
    return image


def nifti_to_sitk(image: nib.Nifti1Image, dtype=np.float32) -> sitk.Image:
    """A nibabel image as a SimpleITK image with the same voxels at the same physical positions.

    The voxel array ``(i, j, k)`` becomes ITK's ``(x, y, z)`` index order; spacing, direction and
    origin come from the RAS affine converted to LPS. Shears (non-orthogonal affines) are refused,
    since ITK images cannot represent them.
    """
    data = np.asarray(image.dataobj, dtype=dtype)
    if data.ndim != 3:
        raise ValueError(f"expected a 3D image, got shape {data.shape}")
    affine = np.asarray(image.affine, dtype=np.float64)
    linear = _RAS_TO_LPS @ affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"degenerate affine (zero voxel size): {affine.tolist()}")
    direction = linear / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError("the affine has a shear, which ITK images cannot represent; resample the image first")
    # GetImageFromArray reads numpy's last axis as x, so give it (k, j, i).
    out = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    out.SetSpacing(tuple(float(s) for s in spacing))
    out.SetDirection(tuple(float(d) for d in direction.ravel()))
    out.SetOrigin(tuple(float(o) for o in _RAS_TO_LPS @ affine[:3, 3]))
    return out


def sitk_affine(image: sitk.Image) -> np.ndarray:
    """The 4×4 RAS voxel-to-world affine (NIfTI convention) of a 3D SimpleITK image."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = _RAS_TO_LPS @ direction @ np.diag(spacing)
    affine[:3, 3] = _RAS_TO_LPS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return affine


def sitk_to_nifti(image: sitk.Image, header: Optional[nib.Nifti1Header] = None) -> nib.Nifti1Image:
    """A SimpleITK image as a nibabel image (inverse of :func:`nifti_to_sitk`).

    ``header``, when given, contributes its metadata (description, units, intent); the data type,
    shape and geometry always come from ``image``.
    """
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    affine = sitk_affine(image)
    out = nib.Nifti1Image(data, affine, header=header.copy() if header is not None else None)
    out.set_data_dtype(data.dtype)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    return out


def array_on_grid(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    """A voxel array ``(X, Y, Z)`` (nibabel order) as a float32 image with the geometry of ``like``.

    For volumes computed on the grid of an image read by SimpleITK (e.g. a synthesis from it): the
    geometry is copied, not re-derived from a NIfTI affine, so the two can never disagree.
    """
    array = np.asarray(array, dtype=np.float32)
    if array.shape != tuple(like.GetSize()):
        raise ValueError(f"array of shape {array.shape} does not match the image size {like.GetSize()}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.CopyInformation(like)
    return image


def _write_via_temporary(path: Path, write: Callable[[Path], None]) -> None:
    """Write with ``write(tmp)`` to a same-named file in a temporary folder beside ``path``, then rename.

    Unlike :func:`mmhvae.atomic.atomic_write`, the temporary file keeps the final name, because
    SimpleITK and nibabel pick the file format from the extension (``.nii.gz``, ``.tfm``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp_dir:
        tmp = Path(tmp_dir) / path.name
        write(tmp)
        os.replace(tmp, path)


def save_image(image: sitk.Image, path: str | Path) -> None:
    """Write a SimpleITK image atomically (format from the extension, e.g. ``.nii.gz``)."""
    _write_via_temporary(Path(path), lambda p: sitk.WriteImage(image, str(p), True))


def save_transform(transform: sitk.Transform, path: str | Path) -> None:
    """Write a transform atomically (ITK text format for ``.tfm``)."""
    _write_via_temporary(Path(path), lambda p: sitk.WriteTransform(transform, str(p)))
