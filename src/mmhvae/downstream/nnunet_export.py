"""Export observed and synthesized channels as an nnU-Net v2 dataset, and check one (DESIGN §6).

Layout written (nnU-Net v2 "raw" dataset)::

    DatasetXXX_Name/
      dataset.json              channel_names, labels, numTraining, file_ending (+ name, description)
      imagesTr/{CASE}_{XXXX}.nii.gz   one file per channel XXXX = 0000, 0001, ...
      labelsTr/{CASE}.nii.gz          consecutive integer labels, background 0
      imagesTs/{CASE}_{XXXX}.nii.gz   subjects of the test split
      labelsTs/{CASE}.nii.gz          their labels when known (for evaluation; nnU-Net ignores it)
      mmhvae_export.json              provenance: per case and channel, observed or synthetic

Two ways to fill the channels (paper §4.4.3):

* ``observed+synth``: each channel is the acquired image when the subject has it and the synthesis
  from the subject's observed modalities otherwise — a complete multi-channel dataset from an
  incomplete cohort;
* ``synthetic`` channels (e.g. ``us``): always synthesized, from the subject's *other* observed
  modalities — e.g. synthetic ultrasound from MR to train an ultrasound segmenter with MR labels.

All channels and the label of a case are written on the subject's one voxel grid (the cohort loader
has checked that every file of a subject shares it), so nnU-Net's geometry checks pass.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import nibabel as nib
import numpy as np

from mmhvae.downstream import Synthesizer
from mmhvae.errors import InputDataError

FILE_ENDING = ".nii.gz"
_DATASET_NAME = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9_\-]+)$")
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii\.gz$")
_CASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

#: BraTS-style regions; value 4 is the enhancing label of BraTS up to 2020 (3 in the built-in cohort).
TUMOUR_REGIONS: dict[str, tuple[int, ...]] = {
    "background": (0,),
    "necrotic": (1,),
    "oedema": (2,),
    "enhancing": (3, 4),
}
#: One foreground class for the whole tumour (the ultrasound task of paper Table 6).
WHOLE_TUMOUR: dict[str, tuple[int, ...]] = {"background": (0,), "tumour": (1, 2, 3, 4)}


class NnunetDatasetError(InputDataError):
    """An nnU-Net dataset folder does not follow the v2 layout; the message lists every problem."""


@dataclass
class ExportSummary:
    """What :func:`export_nnunet` wrote: case names per part, channels, and subjects left out (why)."""

    path: Path
    channels: list[str]
    training: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class NnunetDataset:
    """A validated dataset: channel names (index order), label name -> value, case names."""

    path: Path
    channels: list[str]
    labels: dict[str, int]
    training: list[str]
    test: list[str]


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def label_lookup(labels: Mapping[str, Sequence[int]]) -> tuple[dict[str, int], dict[int, int]]:
    """nnU-Net labels (name -> consecutive value, background 0) and the source-value -> value map.

    ``labels`` maps each output class, in order, to the source label values it collects; the first
    class must be ``background`` and hold 0.
    """
    names = list(labels)
    if not names or names[0] != "background" or 0 not in tuple(labels["background"]):
        raise ValueError(f"labels must start with 'background' holding value 0, got {dict(labels)}")
    remap: dict[int, int] = {}
    for value, name in enumerate(names):
        for source in labels[name]:
            if int(source) in remap:
                raise ValueError(f"label value {source} is assigned to two classes in {dict(labels)}")
            remap[int(source)] = value
    return {name: value for value, name in enumerate(names)}, remap


def remap_labels(seg: np.ndarray, remap: Mapping[int, int], source: str) -> np.ndarray:
    """Map a label map's values through ``remap``; unknown values are an error naming ``source``."""
    values = np.unique(seg)
    unknown = [int(v) for v in values if int(v) not in remap]
    if unknown:
        raise ValueError(
            f"{source}: label values {unknown} are not assigned to any class (known: {sorted(remap)}); "
            "choose a label scheme that covers them"
        )
    table = np.zeros(int(values.max()) + 1, dtype=np.uint8)
    for src, dst in remap.items():
        if 0 <= src < len(table):
            table[src] = dst
    return table[seg.astype(np.int64)]


def check_dataset_name(path: Path) -> None:
    """nnU-Net finds datasets by folder name ``DatasetXXX_Name`` (three digits)."""
    if not _DATASET_NAME.match(Path(path).name):
        raise ValueError(
            f"{path}: nnU-Net dataset folders are named DatasetXXX_Name with a three-digit id, "
            f"e.g. {Path(path).parent / 'Dataset501_MMHVAE'}"
        )


def export_nnunet(
    subjects: Sequence,
    out: str | Path,
    *,
    channels: Sequence[str],
    synthesize: Optional[Synthesizer] = None,
    synthetic: Sequence[str] = (),
    labels: Mapping[str, Sequence[int]] = TUMOUR_REGIONS,
    test_splits: Sequence[str] = ("test",),
    description: str = "",
    provenance: Optional[Mapping[str, object]] = None,
    load=None,
    log=print,
    overwrite: bool = False,
) -> ExportSummary:
    """Write subjects as an nnU-Net v2 dataset under ``out`` (named ``DatasetXXX_Name``).

    Args:
        subjects: :class:`mmhvae.data.cohort.Subject` objects (name, paths, seg, split).
        channels: modality names of the channels, in channel order (``0000``, ``0001``, ...).
        synthesize: the :data:`Synthesizer` filling missing or ``synthetic`` channels; may be None
            when every subject has every channel and none is ``synthetic``.
        synthetic: channels always synthesized, from the subject's other observed modalities.
        labels: output class -> source label values (default :data:`TUMOUR_REGIONS`).
        test_splits: subjects of these splits go to ``imagesTs`` (their labels to ``labelsTs``).
        provenance: extra fields for ``mmhvae_export.json`` (e.g. the checkpoint).
        load: subject -> :class:`~mmhvae.data.cohort.SubjectVolumes` (default ``load_subject``).

    Training subjects without a segmentation, and subjects without any modality to synthesize
    from, are skipped and listed in the summary. The dataset is validated after writing. It is
    written all-or-nothing: into a staging folder beside ``out`` that replaces ``out`` only once every
    case is written and the dataset validated; an existing ``out`` is replaced only with ``overwrite``.
    """
    from mmhvae.outputs import OutputFolder

    if load is None:
        from mmhvae.data.cohort import load_subject as load
    out = Path(out)
    channels = list(channels)
    synthetic = list(synthetic)
    label_names, remap = _check_export(out, channels, synthetic, labels, overwrite)
    # Plan every case before writing anything, so that a refusal leaves no half-written dataset.
    summary = ExportSummary(path=out, channels=channels)
    plans = _plan_cases(subjects, channels, synthetic, test_splits, synthesize, summary)

    with OutputFolder(out, overwrite=overwrite, replace=True) as folder:
        staged = folder.staging  # named like ``out``: dataset.json takes its name from the folder
        cases: dict[str, dict] = {}
        for plan in plans:
            volumes = load(plan.subject)
            images = _case_images(plan, volumes, synthesize)
            cases[plan.subject.name] = _write_case(staged, plan, volumes, images, channels, remap, summary, log)

        _write_metadata(staged, channels, label_names, summary, description, {
            "channels": channels, "synthetic_channels": synthetic,
            "label_sources": {name: list(map(int, values)) for name, values in labels.items()},
            "cases": cases, "skipped": summary.skipped, **dict(provenance or {}),
        })
        validate_nnunet_dataset(staged)
    return summary


def _check_export(
    out: Path, channels: list[str], synthetic: list[str], labels: Mapping[str, Sequence[int]], overwrite: bool
) -> tuple[dict[str, int], dict[int, int]]:
    """Refuse a bad dataset name, channel list, label scheme or occupied ``out``; the label lookup."""
    from mmhvae.errors import OutputError

    check_dataset_name(out)
    if not channels or len(set(channels)) != len(channels):
        raise ValueError(f"channels must be distinct modality names, got {channels}")
    stray = [c for c in synthetic if c not in channels]
    if stray:
        raise ValueError(f"synthetic channels {stray} are not among the channels {channels}")
    lookup = label_lookup(labels)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        what = "an nnU-Net dataset" if (out / "dataset.json").exists() else "files"
        raise OutputError(
            f"{out}: already holds {what}; pass --overwrite to replace it or choose a new DatasetXXX_Name"
        )
    return lookup


def _plan_cases(
    subjects: Sequence, channels: list[str], synthetic: list[str], test_splits: Sequence[str],
    synthesize: Optional[Synthesizer], summary: ExportSummary,
) -> list["_CasePlan"]:
    """The plan of every exported subject (the others go to ``summary.skipped``); refuses an impossible export."""
    plans = []
    for subject in subjects:
        plan = _plan_case(subject, channels, synthetic, test_splits)
        if isinstance(plan, str):
            summary.skipped[subject.name] = plan
        else:
            plans.append(plan)
    lacking = [p.subject.name for p in plans if p.needed]
    if lacking and synthesize is None:
        raise ValueError(
            f"subjects {lacking[:5]}{'...' if len(lacking) > 5 else ''} lack channels of {channels}: "
            "give a synthesis model (--checkpoint) to fill them"
        )
    if not any(not p.test for p in plans):
        raise ValueError(
            "no training case to write (subjects need a segmentation and a split outside "
            f"{list(test_splits)}); skipped: {summary.skipped}"
        )
    return plans


def _write_case(
    staged: Path, plan: "_CasePlan", volumes, images: dict[str, np.ndarray], channels: list[str],
    remap: Mapping[int, int], summary: ExportSummary, log,
) -> dict:
    """Write one case's channels and label; its provenance record for ``mmhvae_export.json``."""
    from mmhvae.data.nifti import write_labels, write_volume

    subject = plan.subject
    part = "Ts" if plan.test else "Tr"
    for index, c in enumerate(channels):
        write_volume(staged / f"images{part}" / f"{subject.name}_{index:04d}{FILE_ENDING}",
                     images[c], volumes.affine, volumes.header)
    if volumes.seg is not None:
        label = remap_labels(volumes.seg, remap, str(subject.seg))
        write_labels(staged / f"labels{part}" / f"{subject.name}{FILE_ENDING}", label, volumes.affine)
    (summary.test if plan.test else summary.training).append(subject.name)
    origin = {c: ("synthetic" if c in plan.needed else "observed") for c in channels}
    log(f"  {subject.name} -> images{part}: " + ", ".join(f"{c} {origin[c]}" for c in channels))
    return {"part": f"images{part}", "channels": origin, "synthesized_from": plan.inputs if plan.needed else []}


@dataclass
class _CasePlan:
    subject: object
    test: bool
    inputs: list[str]  # observed modalities the synthesizer may use
    needed: list[str]  # channels to synthesize


def _plan_case(subject, channels: list[str], synthetic: list[str], test_splits: Sequence[str]) -> "_CasePlan | str":
    """What to do with one subject, or why it is skipped."""
    test = subject.split in test_splits
    if not _CASE_NAME.match(subject.name):
        return "name has characters nnU-Net case identifiers cannot hold"
    if not test and subject.seg is None:
        return "no segmentation (needed for training)"
    inputs = [m for m in subject.paths if m not in synthetic]
    needed = [c for c in channels if c in synthetic or c not in subject.paths]
    if needed and not inputs:
        return f"no observed modality to synthesize {needed} from"
    return _CasePlan(subject, test, inputs, needed)


def _case_images(plan: _CasePlan, volumes, synthesize: Optional[Synthesizer]) -> dict[str, np.ndarray]:
    """Channel name -> ``(X, Y, Z)`` array: observed volumes, plus the synthesis of the needed ones."""
    name = plan.subject.name
    images = {c: volumes.images[c] for c in volumes.images if c not in plan.needed}
    if not plan.needed:
        return images
    inputs = {m: nib.Nifti1Image(volumes.images[m], volumes.affine, volumes.header) for m in plan.inputs}
    result = synthesize(inputs, plan.needed)
    for c in plan.needed:
        if c not in result:
            raise ValueError(f"the synthesizer returned no {c!r} for subject {name!r}")
        array = np.asarray(result[c].dataobj, dtype=np.float32)
        if array.shape != volumes.shape:
            raise ValueError(
                f"synthesized {c!r} for subject {name!r} has shape {array.shape}, expected {volumes.shape}"
            )
        images[c] = array
    return images


def _write_metadata(out: Path, channels: list[str], label_names: dict[str, int], summary: ExportSummary,
                    description: str, record: dict) -> None:
    """``dataset.json`` (what nnU-Net reads) and ``mmhvae_export.json`` (provenance)."""
    from mmhvae.atomic import atomic_write_text

    dataset = {
        "name": _DATASET_NAME.match(out.name).group(2),
        "description": description or "exported by mmhvae export-nnunet",
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": label_names,
        "numTraining": len(summary.training),
        "file_ending": FILE_ENDING,
    }
    atomic_write_text(out / "dataset.json", json.dumps(dataset, indent=2) + "\n")
    atomic_write_text(out / "mmhvae_export.json", json.dumps(record, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def validate_nnunet_dataset(path: str | Path, affine_tolerance: float = 1e-4) -> NnunetDataset:
    """Check an nnU-Net v2 raw dataset folder and return what it holds.

    Checks the folder name, ``dataset.json`` (keys, consecutive labels from background 0, channel
    indices), that every case of ``imagesTr``/``imagesTs`` has exactly the declared channels, that
    every training case has a label and no label lacks images, ``numTraining``, that all channels and
    the label of a case share one shape and affine, and that label values are declared ones.
    Raises :class:`NnunetDatasetError` listing every problem found (files named).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: dataset folder not found")
    problems: list[str] = []
    if not _DATASET_NAME.match(path.name):
        problems.append(f"{path.name}: folder name must be DatasetXXX_Name (three-digit id)")
    meta = _read_dataset_json(path / "dataset.json", problems)
    if meta is None:
        raise NnunetDatasetError(_problem_text(path, problems))
    channels, labels, ending = meta
    common = dict(n_channels=len(channels), ending=ending, labels=labels, tolerance=affine_tolerance, problems=problems)
    training = _check_part(path, "imagesTr", "labelsTr", required=True, **common)
    test = _check_part(path, "imagesTs", "labelsTs", required=False, **common)
    try:
        declared = json.loads((path / "dataset.json").read_text())["numTraining"]
    except (KeyError, ValueError):
        declared = None
    if declared != len(training):
        problems.append(f"dataset.json: numTraining is {declared} but imagesTr holds {len(training)} cases")
    if problems:
        raise NnunetDatasetError(_problem_text(path, problems))
    return NnunetDataset(path=path, channels=channels, labels=labels, training=training, test=test)


def _problem_text(path: Path, problems: list[str]) -> str:
    shown = problems[:20]
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return f"{path}: not a valid nnU-Net v2 dataset:\n  " + "\n  ".join(shown) + more


def _read_dataset_json(file: Path, problems: list[str]) -> Optional[tuple[list[str], dict[str, int], str]]:
    if not file.is_file():
        problems.append(f"{file}: missing")
        return None
    try:
        meta = json.loads(file.read_text())
    except ValueError as exc:
        problems.append(f"{file}: not valid JSON ({exc})")
        return None
    missing = [k for k in ("channel_names", "labels", "numTraining", "file_ending") if k not in meta]
    if missing:
        problems.append(f"{file}: missing keys {missing}")
        return None
    names = meta["channel_names"]
    if not isinstance(names, dict) or not names or set(names) != {str(i) for i in range(len(names))}:
        problems.append(f"{file}: channel_names keys must be '0', '1', ... consecutively, got {list(names)}")
        return None
    labels = meta["labels"]
    values = sorted(v for v in labels.values() if isinstance(v, int)) if isinstance(labels, dict) else []
    if not isinstance(labels, dict) or labels.get("background") != 0 or values != list(range(len(labels))):
        # Region-based labels (lists of values) are legal in nnU-Net but never written by us.
        problems.append(f"{file}: labels must map names to consecutive integers with background = 0, got {labels}")
        return None
    ending = meta["file_ending"]
    if ending != FILE_ENDING:
        problems.append(f"{file}: file_ending {ending!r}; this checker reads {FILE_ENDING!r} datasets")
        return None
    return [names[str(i)] for i in range(len(names))], dict(labels), ending


def _check_part(
    root: Path, images: str, labels_dir: str, n_channels: int, ending: str,
    labels: dict[str, int], required: bool, tolerance: float, problems: list[str],
) -> list[str]:
    folder = root / images
    if not folder.is_dir():
        if required:
            problems.append(f"{folder}: missing")
        return []
    per_case: dict[str, set[int]] = {}
    for file in sorted(folder.iterdir()):
        match = _CHANNEL_FILE.match(file.name)
        if not match or not file.name.endswith(ending):
            problems.append(f"{file}: name must be CASE_XXXX{ending} (XXXX = channel index, 4 digits)")
            continue
        per_case.setdefault(match.group("case"), set()).add(int(match.group("channel")))
    cases = sorted(per_case)
    label_folder = root / labels_dir
    label_files = {f.name[: -len(ending)] for f in label_folder.glob(f"*{ending}")} if label_folder.is_dir() else set()
    for orphan in sorted(label_files - set(cases)):
        problems.append(f"{label_folder / (orphan + ending)}: label without images in {images}/")
    allowed = set(labels.values())
    for case in cases:
        found = per_case[case]
        if found != set(range(n_channels)):
            want = [f"{case}_{i:04d}{ending}" for i in sorted(set(range(n_channels)) - found)]
            extra = [f"{case}_{i:04d}{ending}" for i in sorted(found - set(range(n_channels)))]
            problems.append(f"{folder}: case {case!r} " + "; ".join(
                p for p in (f"missing {want}" if want else "", f"undeclared channels {extra}" if extra else "") if p
            ))
            continue
        files = [folder / f"{case}_{i:04d}{ending}" for i in range(n_channels)]
        label_file = label_folder / f"{case}{ending}"
        if case in label_files:
            files.append(label_file)
        elif required:
            problems.append(f"{label_file}: missing (every training case needs a label)")
        _check_geometry(files, tolerance, problems)
        if case in label_files:
            try:
                values = set(np.unique(np.asarray(nib.load(str(label_file)).dataobj)).tolist())
            except Exception as exc:  # unreadable file: report it with the others
                problems.append(f"{label_file}: unreadable ({exc})")
                continue
            bad = sorted(v for v in values if v not in allowed or float(v) != int(v))
            if bad:
                problems.append(f"{label_file}: values {bad} are not declared labels {sorted(allowed)}")
    return cases


def _check_geometry(files: list[Path], tolerance: float, problems: list[str]) -> None:
    reference = None
    for file in files:
        try:
            header = nib.load(str(file))
        except Exception as exc:  # unreadable file: report it with the others
            problems.append(f"{file}: unreadable ({exc})")
            return
        shape = tuple(header.shape[:3])
        if len(header.shape) != 3 and not (len(header.shape) == 4 and header.shape[3] == 1):
            problems.append(f"{file}: expected a 3D image, got shape {header.shape}")
        if reference is None:
            reference = (file, shape, header.affine)
            continue
        ref_file, ref_shape, ref_affine = reference
        if shape != ref_shape:
            problems.append(f"{file}: shape {shape} differs from {ref_file.name} {ref_shape}")
        elif not np.allclose(header.affine, ref_affine, atol=tolerance):
            problems.append(
                f"{file}: affine differs from {ref_file.name} by "
                f"{np.abs(header.affine - ref_affine).max():.3g} (tolerance {tolerance})"
            )
