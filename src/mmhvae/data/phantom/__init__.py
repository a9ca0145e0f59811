"""The built-in cohort: brain-tumour subjects with real anatomy, MR contrasts and intra-operative ultrasound.

Anatomy comes from the MNI152 2009 template shipped in the ``nilearn`` wheel (grey- and white-matter
probability maps, CSF = brain - GM - WM with the ventricles; :mod:`.template`), deformed per subject
by a random smooth transform (size, hemisphere asymmetry, rotation, a few millimetres of elastic
warp, ventricle size) and resampled to the requested grid; a tumour (necrotic core, enhancing rim,
oedema along white matter, maybe calcifications) displaces the tissue around it, and some subjects
have small MS-like white-matter lesions (:mod:`.anatomy`). MR contrasts (T1, contrast-enhanced T1,
T2, FLAIR) follow from tissue properties through the sequence equations, with per-site timings,
scanner gain, bias field, partial volume and Rician noise (:mod:`.contrasts`); the ultrasound is a
sector from a probe on the brain surface over the tumour with echogenicity, specular reflections,
acoustic shadows, attenuation with time-gain control and speckle (:mod:`.ultrasound`).

MR volumes are skull-stripped like BraTS and the preprocessed ReMIND data (zero outside the brain
mask, which is written too: manifest column ``mask``), so a file given to ``mmhvae synthesize`` without
its mask is harmonized exactly as in training.

Each subject is drawn from its own random streams (``default_rng([seed, index, k])``, one for the
anatomy and one per modality), so a subject does not depend on how many others are generated or
which modalities it lacks, and the same seed gives byte-identical files.

Missingness presets: ``remind`` (the default) follows the ReMIND cohort (ultrasound 100%, ceT1 94%,
T2 63%, FLAIR 20%, about 13% complete) with exact counts; ``brats`` has the four MR contrasts of
BraTS (T1, T2, ceT1, FLAIR), each subject missing 0-3 of them at random (:data:`BRATS_MISSING`);
``complete`` keeps everything. Splits (70/15/15) are stratified by availability pattern.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mmhvae.data.phantom.anatomy import (
    BACKGROUND,
    CALCIFICATION,
    CSF,
    ENHANCING,
    GM,
    LESION,
    NECROSIS,
    OEDEMA,
    SEG_OF_TISSUE,
    TISSUE_NAMES,
    VESSEL,
    WM,
    make_anatomy,
)
from mmhvae.data.phantom.contrasts import MR_MODALITIES, mr_image, signal_table
from mmhvae.data.phantom.fields import smooth_field
from mmhvae.data.phantom.template import TemplateMissingError, blurred_template, load_template, template_paths
from mmhvae.data.phantom.ultrasound import ultrasound_image

__all__ = [
    "ALL_MODALITIES", "BRATS_MISSING", "MODALITIES", "PRESETS", "REMIND", "PhantomSubject", "TemplateMissingError",
    "assign_splits", "availability", "default_spacing", "generate_subject", "make_cohort", "signal_table",
    "template_paths", "BACKGROUND", "CSF", "GM", "WM", "NECROSIS", "OEDEMA", "ENHANCING", "LESION", "VESSEL",
    "CALCIFICATION", "SEG_OF_TISSUE", "TISSUE_NAMES",
]

ALL_MODALITIES = ("us", "t1", "t2", "cet1", "flair")  # what the generator can draw
# Modalities of each missingness preset (manifest columns, in this order).
PRESETS = {
    "remind": ("us", "t2", "cet1", "flair"),
    "brats": ("t1", "t2", "cet1", "flair"),
    "complete": ("us", "t2", "cet1", "flair"),
}
MODALITIES = PRESETS["remind"]  # the default cohort's
FOV_MM = (192.0, 192.0, 160.0)  # default field of view; spacing = FOV / shape

# ReMIND availability (fractions of subjects); ultrasound is always present.
REMIND = {"us": 1.00, "cet1": 0.94, "t2": 0.63, "flair": 0.20, "complete": 0.13}
# BraTS-like: probability that a subject misses 0, 1, 2 or 3 of its modalities (which ones: uniform).
BRATS_MISSING = (0.30, 0.40, 0.20, 0.10)
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)


@dataclass
class PhantomSubject:
    """One generated subject: float32 images ``(X, Y, Z)`` of the generated modalities, uint8 tissue
    classes (:data:`TISSUE_NAMES`), uint8 segmentation (0 background, 1 necrotic core, 2 oedema,
    3 enhancing), the bool brain mask, the affine, and the ultrasound's bool field of view (``None``
    without ultrasound)."""

    images: dict[str, np.ndarray]
    tissues: np.ndarray
    seg: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray
    sector: Optional[np.ndarray] = None


def default_spacing(shape: Sequence[int]) -> tuple[float, float, float]:
    """Spacing (mm) that maps ``shape`` onto the default 192 x 192 x 160 mm field of view."""
    return tuple(float(f / n) for f, n in zip(FOV_MM, shape))  # type: ignore[return-value]


def generate_subject(
    index: int, seed: int = 0, shape: Sequence[int] = (128, 128, 64),
    spacing: Optional[Sequence[float]] = None, modalities: Sequence[str] = ALL_MODALITIES,
) -> PhantomSubject:
    """Generate subject ``index`` of the cohort with ``seed`` in memory (the listed ``modalities`` only)."""
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in (spacing or default_spacing(shape)))
    unknown = [m for m in modalities if m not in ALL_MODALITIES]
    if unknown:
        raise ValueError(f"unknown phantom modality {unknown}; the phantom has {list(ALL_MODALITIES)}")
    rng = np.random.default_rng([int(seed), int(index), 0])
    anatomy = make_anatomy(rng, shape, spacing)
    # Fine tissue texture shared by all MR contrasts (microstructure), ±4%.
    texture = 1.0 + np.float32(0.04) * smooth_field(rng, shape, spacing, 3.0)
    images, sector = {}, None
    for modality in modalities:
        stream = np.random.default_rng([int(seed), int(index), 1 + ALL_MODALITIES.index(modality)])
        if modality == "us":
            images[modality], sector = ultrasound_image(stream, anatomy, spacing)
        else:
            images[modality] = mr_image(stream, anatomy, modality, texture, spacing)
    seg = np.zeros(shape, dtype=np.uint8)
    for tissue, label in SEG_OF_TISSUE.items():
        seg[anatomy.tissues == tissue] = label
    # RAS affine centred on the volume.
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(shape, spacing)]
    return PhantomSubject(images, anatomy.tissues, seg, anatomy.brain, affine, sector)


def preset_modalities(missingness: str, modalities: Optional[Sequence[str]] = None) -> tuple[str, ...]:
    """The manifest's modalities for a missingness preset (``modalities`` overrides where allowed)."""
    if missingness not in PRESETS:
        raise ValueError(f"missingness must be one of {sorted(PRESETS)}, got {missingness!r}")
    if modalities is None:
        return PRESETS[missingness]
    unknown = [m for m in modalities if m not in ALL_MODALITIES]
    if unknown or not modalities or len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities must be distinct names among {list(ALL_MODALITIES)}, got {list(modalities)}")
    if missingness == "remind" and set(modalities) != set(PRESETS["remind"]):
        raise ValueError(f"missingness 'remind' is defined for {list(PRESETS['remind'])}; use 'complete' or "
                         f"'brats' for other modalities")
    return tuple(m for m in ALL_MODALITIES if m in modalities)


def availability(
    subjects: int, seed: int, missingness: str, modalities: Optional[Sequence[str]] = None
) -> np.ndarray:
    """Bool ``(subjects, M)`` availability over :func:`preset_modalities` (``remind``: :data:`MODALITIES`).

    ``remind`` has exact ReMIND counts: the complete subjects are a subset of the FLAIR ones; the other
    FLAIR subjects lack T2; T2 and ceT1 absences are spread over the rest, so the counts of every
    modality and of complete subjects all match their targets (rounded). ``brats``: each subject
    misses k modalities (k drawn from :data:`BRATS_MISSING`, at most M - 1), chosen uniformly.
    """
    names = preset_modalities(missingness, modalities)
    avail = np.ones((subjects, len(names)), dtype=bool)
    if missingness == "complete":
        return avail
    rng = np.random.default_rng([int(seed), 1_000_003])
    if missingness == "brats":
        counts = rng.choice(len(BRATS_MISSING), size=subjects, p=BRATS_MISSING)
        for i, k in enumerate(np.minimum(counts, len(names) - 1)):
            avail[i, rng.permutation(len(names))[:k]] = False
        return avail
    n = subjects
    n_flair = round(REMIND["flair"] * n)
    n_t2 = round(REMIND["t2"] * n)
    n_cet1 = round(REMIND["cet1"] * n)
    n_complete = min(round(REMIND["complete"] * n), n_flair, n_t2, n_cet1)
    order = rng.permutation(n)
    flair, rest = order[:n_flair], order[n_flair:]
    col = {m: i for i, m in enumerate(MODALITIES)}
    avail[:, col["flair"]] = False
    avail[flair, col["flair"]] = True
    avail[flair[n_complete:], col["t2"]] = False  # FLAIR but not complete: no T2
    # Remaining T2 slots go to non-FLAIR subjects; ceT1 absences to non-FLAIR subjects too.
    t2_rest = max(n_t2 - n_complete, 0)
    avail[rest[t2_rest:], col["t2"]] = False
    missing_cet1 = rng.permutation(rest)[: max(n - n_cet1, 0)]
    avail[missing_cet1, col["cet1"]] = False
    return avail


def assign_splits(avail: np.ndarray, seed: int) -> list[str]:
    """70/15/15 train/val/test, stratified by availability pattern, deterministic in ``seed``.

    Subjects are interleaved so that every prefix of the order mirrors the pattern mix, then every
    ~3rd position (30% in all) leaves training, alternately for val and test.
    """
    rng = np.random.default_rng([int(seed), 2_000_003])
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(avail):
        groups.setdefault(tuple(bool(b) for b in row), []).append(i)
    keyed = []
    for members in groups.values():
        members = rng.permutation(members)
        keyed += [((k + rng.uniform()) / len(members), int(i)) for k, i in enumerate(members)]
    order = [i for _, i in sorted(keyed)]
    held_out = SPLIT_FRACTIONS[1] + SPLIT_FRACTIONS[2]
    splits = ["train"] * len(avail)
    taken = 0
    for k, i in enumerate(order):
        if np.floor((k + 1) * held_out + 0.5) > np.floor(k * held_out + 0.5):
            splits[i] = "val" if taken % 2 == 0 else "test"
            taken += 1
    return splits


def _write_subject(job: tuple) -> list[str]:
    """Generate and write one subject; returns its manifest row (paths relative to the cohort)."""
    from mmhvae.data.nifti import write_labels, write_volume

    out, index, seed, shape, spacing, modalities, avail, split, name = job
    present = [m for m, a in zip(modalities, avail) if a]
    subject = generate_subject(index, seed, shape, spacing, modalities=present)
    folder = Path(out) / name
    row = [name]
    for modality in modalities:
        if modality in present:
            # Integer-valued like scanner output: int16 MR, 8-bit ultrasound (half the bytes to gzip).
            dtype = np.uint8 if modality == "us" else np.int16
            write_volume(folder / f"{name}-{modality}.nii.gz", subject.images[modality], subject.affine, dtype=dtype)
            row.append(f"{name}/{name}-{modality}.nii.gz")
        else:
            row.append("")
    write_labels(folder / f"{name}-seg.nii.gz", subject.seg, subject.affine)
    write_labels(folder / f"{name}-mask.nii.gz", subject.brain_mask.astype(np.uint8), subject.affine)
    row += [f"{name}/{name}-seg.nii.gz", f"{name}/{name}-mask.nii.gz", split]
    return row


def make_cohort(
    out: str | Path,
    subjects: int = 100,
    seed: int = 0,
    shape: Sequence[int] = (128, 128, 64),
    spacing: Optional[Sequence[float]] = None,
    missingness: str = "remind",
    workers: Optional[int] = None,
    modalities: Optional[Sequence[str]] = None,
) -> Path:
    """Write a built-in cohort under ``out`` and return its manifest ``out/manifest.csv``.

    Layout: ``out/<subject>/<subject>-<modality>.nii.gz`` for the present modalities, plus
    ``-seg`` and ``-mask``; the manifest has columns ``subject, <modalities...>, seg, mask, split``
    (``remind`` and ``complete``: us, t2, cet1, flair; ``brats``: t1, t2, cet1, flair; ``modalities``
    chooses others for ``complete`` and ``brats``, e.g. ``["us", "t1", "flair"]`` like RESECT).
    ``spacing`` defaults to a 192 x 192 x 160 mm field of view. ``workers`` processes generate
    subjects in parallel (default: the available cores, at most 8); results do not depend on it.
    """
    from mmhvae.atomic import atomic_write_text

    if subjects < 1:
        raise ValueError(f"subjects must be >= 1, got {subjects}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes >= 8, got {shape}")
    spacing = tuple(float(s) for s in (spacing or default_spacing(shape)))
    names = preset_modalities(missingness, modalities)
    avail = availability(subjects, seed, missingness, names)
    splits = assign_splits(avail, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(subjects - 1)))
    subject_names = [f"phantom{i:0{width}d}" for i in range(subjects)]
    jobs = [(str(out), i, seed, shape, spacing, names, tuple(avail[i]), splits[i], subject_names[i])
            for i in range(subjects)]
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
    workers = max(1, min(workers, subjects))
    # Read and blur the template once, before any worker is forked (they inherit it).
    load_template()
    blurred_template(spacing)
    if workers == 1:
        rows = [_write_subject(job) for job in jobs]
    else:
        # fork (as torch's DataLoader does on Linux): workers need numpy/scipy only, and unlike
        # spawn/forkserver it does not re-import a caller's __main__ that lacks a main guard.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            rows = list(pool.map(_write_subject, jobs, chunksize=1))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["subject", *names, "seg", "mask", "split"])
    writer.writerows(rows)
    manifest = out / "manifest.csv"
    atomic_write_text(manifest, text.getvalue())
    return manifest

