"""The registration benchmark of paper Table 5: MR displaced by simulated rigid motions, registered
back directly to the ultrasound or via an MR synthesized from it, scored by the TRE.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from mmhvae.downstream.registration.displacement import (
    displace,
    displacement_magnitudes,
    mask_points,
    random_rigid_displacement,
    target_registration_error,
)
from mmhvae.downstream.registration.images import array_on_grid, nifti_to_sitk
from mmhvae.downstream.registration.rigid import (
    RegistrationReport,
    RigidSettings,
    field_of_view_mask,
    foreground_mask,
    register_rigid,
)

#: Displacement ranges of the paper's Table 5, in mm (median displacement over the brain).
PAPER_RANGES: tuple[tuple[float, float], ...] = ((0.0, 4.0), (4.0, 8.0), (8.0, 12.0), (12.0, 16.0))


@dataclass
class TreRow:
    """One registration of the benchmark: TRE statistics over the landmarks (mm)."""

    subject: str
    modality: str
    range_mm: str
    repeat: int
    method: str  # "before", "direct" (to the ultrasound), "synthesis" (to the synthetic MR), "upper-bound"
    tre_mean: float
    tre_std: float
    tre_median: float
    initial_median: float
    seconds: float
    stop_condition: str = ""


METHOD_NAMES = {
    "before": "No registration",
    "direct": "Acquired iUS",
    "synthesis": "Synthetic MR (from iUS)",
    "upper-bound": "Acquired MR (perfect synthesis)",
}


def parse_ranges(text: str) -> tuple[tuple[float, float], ...]:
    """``"0-4,4-8"`` -> ``((0, 4), (4, 8))``; the message says what is wrong."""
    ranges = []
    for item in text.split(","):
        try:
            low, high = (float(v) for v in item.strip().split("-"))
        except ValueError:
            raise ValueError(f"displacement range {item!r}: expected LOW-HIGH in mm, e.g. 0-4,4-8,8-12,12-16") from None
        if not 0 <= low < high:
            raise ValueError(f"displacement range {item!r}: need 0 <= LOW < HIGH")
        ranges.append((low, high))
    return tuple(ranges)


def range_label(low: float, high: float) -> str:
    return f"{low:g}-{high:g}"


def benchmark_registration(
    subjects: Sequence,
    *,
    fixed_modality: str = "us",
    modalities: Sequence[str] = ("t2", "cet1", "flair"),
    synthesize=None,
    ranges: Sequence[tuple[float, float]] = PAPER_RANGES,
    repeats: int = 1,
    seed: int = 0,
    settings: Optional[RigidSettings] = None,
    landmark_step: int = 2,
    max_landmarks: int = 20000,
    upper_bound: bool = False,
    load=None,
    log: Callable[[str], None] = print,
) -> list[TreRow]:
    """TRE of MR-to-ultrasound registration under simulated rigid displacements (paper §4.4.4).

    For each subject with an ultrasound and an MR ``modality``: the MR is displaced by a random
    rigid transform whose median displacement over the brain falls in each range (``repeats`` draws
    per range, seeded by ``seed``, subject and modality), then registered back (a) to the acquired
    ultrasound and (b), when ``synthesize`` is given, to the MR synthesized from the ultrasound;
    ``upper_bound`` adds (c), registration to the undisplaced acquired MR itself, i.e. what a perfect
    synthesis would give (a mono-modal problem, so the floor of the via-synthesis error).
    The metric region is the ultrasound sector, eroded by the correlation radius (see
    :func:`field_of_view_mask`). The TRE is measured on a grid of brain voxels (every
    ``landmark_step``-th along each axis; the brain mask, or the MR foreground without one).

    ``subjects`` are :class:`~mmhvae.data.cohort.Subject` objects, read with ``load``
    (default :func:`~mmhvae.data.cohort.load_subject`).
    """
    if load is None:
        from mmhvae.data.cohort import load_subject as load
    settings = settings or RigidSettings()
    settings.validate()
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    rows: list[TreRow] = []
    for subject in subjects:
        present = [m for m in modalities if m in subject.paths]
        if fixed_modality not in subject.paths or not present:
            log(f"  {subject.name}: skipped (needs {fixed_modality} and one of {list(modalities)})")
            continue
        volumes = load(subject)
        fixed = nifti_to_sitk(nib.Nifti1Image(volumes.images[fixed_modality], volumes.affine))
        sector = field_of_view_mask(fixed, erode=settings.radius)
        synthetic = {}
        if synthesize is not None:
            log(f"  {subject.name}: synthesizing {'+'.join(present)} from {fixed_modality}")
            synthetic = _synthesize_on_grid(synthesize, volumes, fixed_modality, present, fixed, subject.name)
        for modality in present:
            moving = nifti_to_sitk(nib.Nifti1Image(volumes.images[modality], volumes.affine))
            points = mask_points(_landmark_mask(volumes, moving), landmark_step, max_landmarks, seed)
            references = _references(fixed, synthetic.get(modality), moving if upper_bound else None)
            # One stream per (seed, subject, modality): adding subjects or modalities changes nothing else.
            rng = np.random.default_rng([seed, zlib.crc32(subject.name.encode()), zlib.crc32(modality.encode())])
            case = dict(subject=subject.name, modality=modality)
            rows += _register_ranges(moving, references, sector, points, settings, ranges, repeats, rng, case, log)
    return rows


def _references(
    ultrasound: sitk.Image, synthesis: Optional[sitk.Image], acquired: Optional[sitk.Image]
) -> dict[str, sitk.Image]:
    """Method name -> the image the displaced MR is registered to, in the order of the table rows."""
    references = {"direct": ultrasound}
    if synthesis is not None:
        references["synthesis"] = synthesis
    if acquired is not None:
        references["upper-bound"] = acquired
    return references


def _register_ranges(
    moving: sitk.Image, references: dict[str, sitk.Image], sector: sitk.Image, points: np.ndarray,
    settings: RigidSettings, ranges: Sequence[tuple[float, float]], repeats: int, rng: np.random.Generator,
    case: dict, log: Callable[[str], None],
) -> list[TreRow]:
    """``repeats`` random displacements of ``moving`` per range, each registered back to every reference."""
    rows: list[TreRow] = []
    for low, high in ranges:
        for repeat in range(repeats):
            truth = random_rigid_displacement(points, low, high, rng)
            draw = dict(case, range_mm=range_label(low, high), repeat=repeat)
            new = _register_displaced(moving, truth, references, sector, points, settings, draw)
            rows += new
            log(f"  {case['subject']} {case['modality']} {draw['range_mm']} mm #{repeat}: TRE "
                + ", ".join(f"{r.method} {r.tre_mean:.1f}" for r in new) + " mm")
    return rows


def _synthesize_on_grid(synthesize, volumes, source: str, targets: list[str], like: sitk.Image, name: str) -> dict:
    """Synthesize ``targets`` from the ``source`` volume; each result as an image on the grid of ``like``."""
    inputs = {source: nib.Nifti1Image(volumes.images[source], volumes.affine, volumes.header)}
    result = synthesize(inputs, targets)
    images = {}
    for m in targets:
        array = np.asarray(result[m].dataobj, dtype=np.float32) if m in result else None
        if array is None or array.shape != volumes.shape:
            got = "nothing" if array is None else f"shape {array.shape}"
            raise ValueError(f"synthesized {m} for {name!r}: got {got}, expected shape {volumes.shape}")
        images[m] = array_on_grid(array, like)
    return images


def _landmark_mask(volumes, moving: sitk.Image) -> sitk.Image:
    """The brain mask of the subject, or the foreground of its MR when it has none."""
    brain = volumes.brain_mask
    if brain is not None and brain.any():
        return nifti_to_sitk(nib.Nifti1Image(brain.astype(np.uint8), volumes.affine), dtype=np.uint8)
    return foreground_mask(moving)


def _register_displaced(
    moving: sitk.Image, truth: sitk.Transform, references: dict[str, sitk.Image], sector: sitk.Image,
    points: np.ndarray, settings: RigidSettings, case: dict,
) -> list[TreRow]:
    """Displace ``moving`` by ``truth``, register it to each reference; one row per method and "before"."""
    displaced = displace(moving, truth)
    initial = displacement_magnitudes(truth, points)
    case = dict(case, initial_median=float(np.median(initial)))
    rows = [TreRow(method="before", tre_mean=float(initial.mean()), tre_std=float(initial.std()),
                   tre_median=float(np.median(initial)), seconds=0.0, **case)]
    for method, reference in references.items():
        report: list[RegistrationReport] = []
        estimate = register_rigid(reference, displaced, fixed_mask=sector, settings=settings, report=report)
        error = target_registration_error(points, estimate, truth)
        rows.append(TreRow(method=method, tre_mean=float(error.mean()), tre_std=float(error.std()),
                           tre_median=float(np.median(error)), seconds=report[0].seconds,
                           stop_condition=report[0].stop_condition, **case))
    return rows


def tre_table(rows: Sequence[TreRow], ranges: Sequence[tuple[float, float]] = PAPER_RANGES) -> str:
    """Markdown tables in the layout of paper Table 5: per MR modality, mean (std) TRE in mm per range.

    The mean and standard deviation are over registrations (each registration's TRE being its mean
    over the landmarks); ``n`` is the number of registrations per cell.
    """
    labels = [range_label(low, high) for low, high in ranges]
    modalities = list(dict.fromkeys(r.modality for r in rows))
    methods = [m for m in METHOD_NAMES if any(r.method == m for r in rows)]
    blocks = []
    for modality in modalities:
        lines = [
            f"**{modality}** — TRE (mm), mean (std) over registrations",
            "",
            "| Reference image | " + " | ".join(f"{label} mm" for label in labels) + " |",
            "|---|" + "---|" * len(labels),
        ]
        for method in methods:
            cells = []
            for label in labels:
                values = [r.tre_mean for r in rows
                          if r.modality == modality and r.method == method and r.range_mm == label]
                cells.append(f"{np.mean(values):.1f} ({np.std(values):.1f})" if values else "–")
            lines.append(f"| {METHOD_NAMES[method]} | " + " | ".join(cells) + " |")
        count = sum(1 for r in rows if r.modality == modality and r.method == "before")
        lines.append("")
        lines.append(f"n = {count} registrations ({count // max(len(labels), 1)} per range)")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def write_tre_csv(rows: Sequence[TreRow], path: str | Path) -> None:
    """One CSV row per registration (and per undisplaced baseline)."""
    import csv
    from dataclasses import asdict, fields

    from mmhvae.atomic import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=[f.name for f in fields(TreRow)])
            writer.writeheader()
            for row in rows:
                writer.writerow(asdict(row))

    atomic_write(Path(path), write)
