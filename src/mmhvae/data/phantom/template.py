"""The MNI152 2009 template shipped in the ``nilearn`` wheel, read once per process.

``nilearn/datasets/data/`` holds the ICBM 2009a symmetric template at 1 mm (T1 and grey- and
white-matter probability maps, uint8 scaled to 0..255; licence in nilearn's
``datasets/description/icbm152_2009.rst``). The files are located from nilearn's install folder
without importing nilearn (its import is slow) and are never copied. The brain mask is the T1 above
0.2 of its range, as ``nilearn.datasets.load_mni152_brain_mask`` does; CSF = brain - GM - WM.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

_FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
_INSTALL_HINT = "install it with `pip install 'nilearn>=0.10'` (no download: the template ships in its wheel)"


class TemplateMissingError(RuntimeError):
    """nilearn, or the MNI152 files of its wheel, cannot be found."""


def template_paths() -> dict[str, Path]:
    """Paths of the T1, GM and WM files of nilearn's MNI152 2009 template; a clear error if absent."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise TemplateMissingError(
            "the built-in cohort draws its anatomy from the MNI152 template of the nilearn package, "
            f"which is not installed; {_INSTALL_HINT}"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    paths = {k: folder / name for k, name in _FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise TemplateMissingError(
            f"nilearn is installed but its MNI152 template files are missing: {', '.join(missing)}; "
            f"reinstall it ({_INSTALL_HINT})"
        )
    return paths


@dataclass(frozen=True)
class Template:
    """Tissue probabilities ``(3, X, Y, Z)`` (CSF, GM, WM) on the template's 1 mm grid, cropped to
    the brain, with the brain centre and candidate points for pathology (voxel = mm coordinates)."""

    tissues: np.ndarray
    centre: np.ndarray  # (3,) centre of the brain's bounding box
    ventricle_centre: np.ndarray  # (3,) centroid of the lateral ventricles
    tumour_sites: np.ndarray  # (K, 3) deep cerebral white matter, away from the midline
    lesion_sites: np.ndarray  # (K, 3) periventricular white matter


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    import nibabel as nib

    raw = {k: np.asanyarray(nib.load(p).dataobj).astype(np.float32) / 255.0 for k, p in template_paths().items()}
    brain = raw["t1"] > 0.2
    gm = np.where(brain, raw["gm"], 0.0)
    wm = np.where(brain, raw["wm"], 0.0)
    total = np.maximum(gm + wm, 1.0)  # the two maps may overlap by rounding
    gm, wm = gm / total, wm / total
    csf = np.where(brain, 1.0 - gm - wm, 0.0)
    box = tuple(slice(max(int(i.min()) - 6, 0), int(i.max()) + 7) for i in np.nonzero(brain))
    tissues = np.stack([csf[box], gm[box], wm[box]]).astype(np.float32)
    brain = brain[box]
    # Centre of the brain's bounding box: a head fills the field of view evenly (not its centroid).
    centre = np.array([(i.min() + i.max()) / 2 for i in np.nonzero(brain)], dtype=np.float32)
    depth = ndi.distance_transform_edt(brain)  # mm from the brain surface
    x_mid = centre[0]
    # Lateral ventricles: the large CSF pool deep inside the cerebrum.
    labels, _ = ndi.label((tissues[0] > 0.5) & (depth > 10))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    ventricles = np.isin(labels, np.argsort(sizes)[-2:]) & (sizes[labels] > 500)
    ventricle_centre = np.array(ndi.center_of_mass(ventricles), dtype=np.float32)
    near_ventricles = ndi.distance_transform_edt(~ventricles) < 10
    grid = np.indices(brain.shape, dtype=np.float32)
    cerebral = grid[2] > ventricle_centre[2] - 18  # above the temporal horns: no cerebellum or brainstem
    lateral = np.abs(grid[0] - x_mid) > 14
    tumour_sites = np.argwhere((tissues[2] > 0.6) & (depth > 14) & (depth < 40) & cerebral & lateral)
    lesion_sites = np.argwhere((tissues[2] > 0.8) & near_ventricles & ~ventricles & cerebral)
    return Template(
        tissues=tissues, centre=centre, ventricle_centre=ventricle_centre,
        tumour_sites=tumour_sites[::7].astype(np.float32), lesion_sites=lesion_sites[::5].astype(np.float32),
    )


@functools.lru_cache(maxsize=4)
def blurred_template(spacing: tuple[float, float, float]) -> np.ndarray:
    """Template tissues pre-blurred for an output ``spacing`` (mm): a Gaussian of 0.4 voxel of the
    output grid, so that resampling at low order neither aliases the folding nor loses it."""
    tissues = load_template().tissues
    sigma = [0.4 * s for s in spacing]
    if max(sigma) < 0.5:
        return tissues
    return np.stack([ndi.gaussian_filter(t, sigma, truncate=2.5) for t in tissues]).astype(np.float32)
