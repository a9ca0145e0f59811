"""PNG montages of subjects: rows = modalities (and the tumour labels), columns = axial slices.

Meant for a person to check a cohort by eye, e.g. a built-in phantom next to a real case
(``mmhvae cohort montage``). Volumes are reoriented to RAS so every row shows the same anatomy
orientation (anterior up, the subject's right on the image's left, radiological convention).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import nibabel as nib
import numpy as np

from mmhvae.data.cohort import Cohort, Subject

# Label colours (RGB): necrotic core, oedema, enhancing rim (BraTS-like 1, 2, 3; BraTS 2017 uses 4).
_LABEL_COLOURS = {1: (0.9, 0.2, 0.2), 2: (0.2, 0.8, 0.2), 3: (1.0, 0.85, 0.1), 4: (1.0, 0.85, 0.1)}


def to_ras(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ornt = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt("RAS"))
    return nib.orientations.apply_orientation(volume, transform)


def spacing_ras(affine: np.ndarray) -> np.ndarray:
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    order = np.abs(nib.orientations.io_orientation(affine)[:, 0]).astype(int)
    out = np.empty(3)
    out[order] = zooms  # spacing of RAS axis order[i] is that of voxel axis i
    return out


def subject_rows(
    subject: Subject, label: str
) -> tuple[list[tuple[str, np.ndarray]], Optional[np.ndarray], np.ndarray]:
    """``([(row title, RAS volume)], RAS seg or None, RAS spacing)`` for one subject."""
    from mmhvae.data.cohort import load_subject

    volumes = load_subject(subject)
    rows = [(f"{label} {m}", to_ras(v, volumes.affine)) for m, v in volumes.images.items()]
    seg = None if volumes.seg is None else to_ras(volumes.seg, volumes.affine)
    return rows, seg, spacing_ras(volumes.affine)


def _pick_slices(rows: list[tuple[str, np.ndarray]], seg: Optional[np.ndarray], columns: int) -> list[int]:
    """Axial positions: around the largest tumour cross-section if labelled, else across the head."""
    depth = rows[0][1].shape[2]
    foreground = np.zeros(depth)
    for _, volume in rows:
        foreground += (volume > np.percentile(volume, 60)).mean(axis=(0, 1))
    present = np.flatnonzero(foreground > 0.1 * foreground.max())
    lo, hi = (int(present[0]), int(present[-1])) if present.size else (0, depth - 1)
    if seg is not None and seg.any():
        centre = int(np.argmax((seg > 0).sum(axis=(0, 1))))
        half = max((hi - lo) // 4, columns // 2)
        lo, hi = max(centre - half, lo), min(centre + half, hi)
    positions = np.linspace(lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo), columns)
    return sorted({int(round(p)) for p in positions})


def _overlay(background: np.ndarray, labels: np.ndarray) -> np.ndarray:
    rgb = np.repeat(background[..., None], 3, axis=-1)
    for label, colour in _LABEL_COLOURS.items():
        hit = labels == label
        rgb[hit] = 0.45 * rgb[hit] + 0.55 * np.asarray(colour)
    return rgb


def _window(volume: np.ndarray) -> np.ndarray:
    values = volume[volume > 0]
    hi = float(np.percentile(values, 99.5)) if values.size else 1.0
    return np.clip(volume / (hi if hi > 0 else 1.0), 0.0, 1.0)


def make_montage(
    blocks: Sequence[tuple[list[tuple[str, np.ndarray]], Optional[np.ndarray], np.ndarray]],
    out: str | Path,
    columns: int = 5,
) -> Path:
    """Draw each block (one subject: rows, seg, spacing) with its own axial slices; write a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmhvae.atomic import atomic_write

    panels = []  # (title, [images], aspect)
    for rows, seg, spacing in blocks:
        picks = _pick_slices(rows, seg, columns)
        aspect = spacing[1] / spacing[0]
        for title, volume in rows:
            shown = _window(volume)
            panels.append((title, [np.rot90(shown[:, :, z]) for z in picks], aspect, picks))
        if seg is not None:
            base = _window(rows[-1][1])
            images = [np.rot90(_overlay(base[:, :, z], seg[:, :, z])) for z in picks]
            panels.append((f"{rows[-1][0].split()[0]} seg", images, aspect, picks))
    ncols = max(len(p[1]) for p in panels)
    fig, axes = plt.subplots(len(panels), ncols, figsize=(2.1 * ncols, 2.2 * len(panels)), squeeze=False)
    for r, (title, images, aspect, picks) in enumerate(panels):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(images[c], cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
                ax.set_title(f"z={picks[c]}", fontsize=7)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(title, fontsize=8)
    fig.tight_layout()
    out = Path(out)

    def save(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=80)

    atomic_write(out, save)
    plt.close(fig)
    return out


def cohort_montage(
    source: str | Path, subject: str, out: str | Path, real: Optional[str | Path] = None,
    modalities: Optional[list[str]] = None, aliases: Optional[dict[str, str]] = None, columns: int = 5,
) -> Path:
    """Montage of ``subject`` of the cohort at ``source``, optionally above a real case folder
    (``<case>/<case>-<suffix>.nii.gz``, e.g. a BraTS case)."""
    cohort = Cohort.load(source, modalities=modalities, aliases=aliases)
    blocks = [subject_rows(cohort.subject(subject), subject)]
    if real is not None:
        real_cohort = Cohort.load(real, aliases=aliases)
        for case in real_cohort.subjects[:1]:
            blocks.append(subject_rows(case, case.name))
    return make_montage(blocks, out, columns=columns)
