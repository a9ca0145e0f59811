"""2D training slices from a cohort, preprocessed once per subject and streamed from disk (DESIGN §3).

Preprocessing of one subject = load and validate (:func:`~mmhvae.data.cohort.load_subject`),
make the two versions of every image the paper uses (§4.4.1): the **input** the encoders see
(acquired intensities scaled per image, :mod:`~mmhvae.data.input_normalization`) and the **target**
the loss and the evaluator score (harmonized, :func:`~mmhvae.data.harmonize.harmonize_subject`);
optionally crop to the field of view of one modality (the ultrasound), keep the slices with
foreground, centre pad/crop them to the model size. The result is written as two ``.npy`` per present
modality ``(N, H, W)`` (``{m}.npy`` target, ``{m}.input.npy`` input; plus ``seg.npy`` and ``meta.json``) under a cache folder keyed by a hash of the preprocessing settings and of the files'
paths, sizes and modification times; later epochs and runs read it back with
``np.load(mmap_mode="r")``. Only the index (subject, slice) lives in memory, so a cohort larger than
memory streams subject by subject.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, WeightedRandomSampler

from mmhvae.config import DataConfig
from mmhvae.data.cohort import Cohort, CohortError, Subject, load_subject
from mmhvae.data.foreground import foreground_mask, subject_foreground
from mmhvae.data.harmonize import harmonize_subject
from mmhvae.data.input_normalization import normalize_input_slices, normalize_input_volume
from mmhvae.data.frame import frame_of
from mmhvae.data.frame_slices import FrameSlices, frame_slices

log = logging.getLogger(__name__)

CACHE_VERSION = 4  # bump when the preprocessing changes what it writes
# DataConfig fields that do not change the preprocessed slices (so they must not change the cache key).
_NOT_PREPROCESSING = {
    "cohort", "modality_aliases", "balance_patterns", "augment", "augment_flip", "augment_rotation",
    "augment_scale", "augment_translation", "cache_dir",
}
_OPEN_SUBJECTS = 32  # memory maps kept open per process (each holds a file descriptor)


def cache_root(cfg: DataConfig) -> Path:
    """``cfg.cache_dir``, else ``$MMHVAE_CACHE``, else ``$XDG_CACHE_HOME/mmhvae`` (``~/.cache/mmhvae``)."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    if os.environ.get("MMHVAE_CACHE"):
        return Path(os.environ["MMHVAE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "mmhvae"


def _digest(payload: object) -> str:
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def preprocessing_key(cfg: DataConfig, modalities: list[str], image_size: int) -> str:
    """Hash of every setting that changes the preprocessed slices."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_PREPROCESSING}
    return _digest({"version": CACHE_VERSION, "modalities": list(modalities), "size": image_size, **settings})


def subject_key(subject: Subject) -> str:
    """Hash of the subject's files (resolved path, size, modification time) and of its name."""
    files = {}
    for key, path in subject.files().items():
        stat = Path(path).stat()
        files[key] = [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]
    return _digest({"name": subject.name, "files": files})


# --------------------------------------------------------------------------------------------------
# One subject
# --------------------------------------------------------------------------------------------------


@dataclass
class PreprocessedSubject:
    """Slices of one subject, float32 ``(T·N, S, S)`` for each present modality (T tiles of the N
    foreground slices of the model's frame): ``inputs[m]`` (what the encoders see, not harmonized) and
    ``targets[m]`` (harmonized: what is scored); ``seg`` int16 or None; ``meta`` (JSON-able: frame,
    tiles, slice indices, training ``items``, harmonization); ``slices`` to assemble outputs."""

    inputs: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    seg: Optional[np.ndarray]
    meta: dict
    slices: Optional[FrameSlices] = None  # the frame, tiles and mapping back (not cached)


def preprocess_subject(
    subject: Subject, cfg: DataConfig, modalities: list[str], image_size: int
) -> PreprocessedSubject:
    """Load, validate, normalize (inputs), harmonize (targets) and cut one subject into slices of the
    model's frame (module docstring; :func:`~mmhvae.data.frame_slices.frame_slices`)."""
    volumes = load_subject(subject, cfg.affine_tolerance, modalities)
    targets, params = harmonize_subject(volumes, cfg)
    arrays: dict[str, np.ndarray] = {}
    for m, volume in volumes.images.items():
        own = volumes.brain_mask if volumes.brain_mask is not None else foreground_mask(volume)
        arrays[f"{m}.input"] = normalize_input_volume(volume, cfg, own)
        arrays[f"{m}.target"] = targets[m]
        arrays[f"{m}.foreground"] = np.asarray(own, dtype=bool)
    if volumes.seg is not None:
        arrays["seg"] = volumes.seg.astype(np.int16)
    restrict = None
    if cfg.crop_to_modality and cfg.crop_to_modality in volumes.images:
        # Train on what the cropping modality sees (its field of view, grown by crop_margin voxels).
        from scipy.ndimage import binary_dilation

        restrict = foreground_mask(volumes.images[cfg.crop_to_modality])
        if cfg.crop_margin > 0 and restrict.any():
            restrict = binary_dilation(restrict, iterations=int(cfg.crop_margin))
    frame = frame_of(cfg, image_size, volumes.affine)
    sliced = frame_slices(
        arrays, volumes.affine, frame, subject=subject.name,
        foreground=subject_foreground(volumes.images, volumes.brain_mask), restrict_to=restrict,
        fit=cfg.fit, min_fraction=cfg.min_foreground_fraction, foreground_only=cfg.foreground_only,
    )
    present = list(volumes.images)
    inputs = {m: normalize_input_slices(sliced.stacks[f"{m}.input"], cfg, sliced.stacks[f"{m}.foreground"])
              for m in present}
    stacked_targets = {m: sliced.stacks[f"{m}.target"] for m in present}
    if restrict is not None:
        # What the model is asked to synthesize (and is scored on) is what the cropping modality sees:
        # an MR target outside the ultrasound cone cannot be inferred from the ultrasound and the
        # outputs are masked to this foreground, so the harmonized targets are 0 there too.
        stacked_targets = {m: np.where(sliced.foreground, t, np.float32(0)).astype(t.dtype)
                           for m, t in stacked_targets.items()}
    # Training items: tile slices that hold foreground (a tile at the edge of a wide brain may not).
    fraction = sliced.foreground.reshape(sliced.foreground.shape[0], -1).mean(axis=1)
    items = np.flatnonzero((fraction > 0) & (fraction >= cfg.min_foreground_fraction)) if cfg.foreground_only \
        else np.arange(fraction.size)
    meta = {
        "subject": subject.name,
        "available": [m in targets for m in modalities],
        "modalities": list(modalities),
        "num_slices": int(items.size),
        "items": [int(i) for i in items],
        **sliced.meta(),
        "harmonization": {m: p.to_dict() for m, p in params.items()},
        "has_seg": "seg" in sliced.stacks,
    }
    return PreprocessedSubject(inputs, stacked_targets, sliced.stacks.get("seg"), meta, sliced)


def _write_cache(folder: Path, data: PreprocessedSubject) -> None:
    """Write into a temporary sibling folder, then rename: readers never see half a subject."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for modality, array in data.targets.items():
            np.save(tmp / f"{modality}.npy", np.ascontiguousarray(array, dtype=np.float32))
            np.save(tmp / f"{modality}.input.npy", np.ascontiguousarray(data.inputs[modality], dtype=np.float32))
        if data.seg is not None:
            np.save(tmp / "seg.npy", np.ascontiguousarray(data.seg, dtype=np.int16))
        (tmp / "meta.json").write_text(json.dumps(data.meta, indent=1))
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # not another process finishing first: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    name: str
    folder: Path
    available: tuple[bool, ...]
    num_slices: int
    items: tuple[int, ...]  # rows of the cached stacks used as training slices
    has_seg: bool


class SliceDataset(Dataset):
    """2D slices of ``subjects`` with per-sample availability masks.

    Each item is a dict: ``inputs`` and ``targets`` FloatTensors ``(M, H, W)`` over ``modalities`` (what
    the encoders see, and the harmonized images that are scored; a missing modality is all zeros in
    both, flagged only by ``available``), ``available`` BoolTensor ``(M,)``, ``seg`` LongTensor
    ``(H, W)`` (zeros when the subject has none), ``has_seg`` bool, ``subject`` str and ``slice`` int (the
    row in the subject's cached (tile, slice) stacks). ``H = W = image_size``.

    Modalities of a subject that are not in ``modalities`` are ignored; a subject with none of them is
    skipped with a warning. ``augment`` applies the same random flip and small affine to every
    modality and the labels of a sample (``cfg.augment_*``).
    """

    def __init__(
        self, cohort: Cohort, subjects: list[Subject], cfg: DataConfig, modalities: list[str],
        image_size: int, augment: bool = False,
    ) -> None:
        self.cohort = cohort
        self.cfg = cfg
        self.modalities = list(modalities)
        self.image_size = int(image_size)
        self.augment = augment
        self.cache_hits = 0  # subjects read from an existing cache entry
        self.cache_misses = 0  # subjects preprocessed by this instance
        self.skipped: list[str] = []
        self.root = cache_root(cfg) / f"slices-{preprocessing_key(cfg, self.modalities, self.image_size)}"
        self.entries: list[_Entry] = []
        for subject in subjects:
            entry = self._prepare(subject)
            if entry is not None:
                self.entries.append(entry)
        counts = np.array([e.num_slices for e in self.entries], dtype=np.int64)
        if counts.sum() == 0:
            raise CohortError(
                f"{cohort.source}: no slices to train on ({len(subjects)} subjects, {len(self.skipped)} skipped "
                f"for lacking all of {self.modalities}); check the modalities or lower "
                "data.min_foreground_fraction"
            )
        # Flat index: item -> (entry, slice within the entry), as two small int arrays.
        self._entry_of = np.repeat(np.arange(len(self.entries)), counts).astype(np.int32)
        self._slice_of = np.concatenate([np.asarray(e.items, dtype=np.int64) for e in self.entries]).astype(np.int32)
        patterns = sorted({e.available for e in self.entries}, key=lambda p: [not b for b in p])
        self.patterns: list[tuple[bool, ...]] = patterns
        pattern_id = {p: i for i, p in enumerate(patterns)}
        entry_patterns = np.array([pattern_id[e.available] for e in self.entries], dtype=np.int64)
        self.sample_patterns = entry_patterns[self._entry_of]  # pattern index of every item
        self._open: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()

    # --- preprocessing and cache ------------------------------------------------------------------
    def _prepare(self, subject: Subject) -> Optional[_Entry]:
        kept = {m: p for m, p in subject.paths.items() if m in self.modalities}
        if not kept:
            self.skipped.append(subject.name)
            log.warning("subject %s has none of the modalities %s: skipped", subject.name, self.modalities)
            return None
        subject = dataclasses.replace(subject, paths=kept)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in subject.name)
        folder = self.root / f"{safe}-{subject_key(subject)}"
        meta_path = folder / "meta.json"
        if meta_path.is_file():
            self.cache_hits += 1
        else:
            log.info("preprocessing %s", subject.name)
            _write_cache(folder, preprocess_subject(subject, self.cfg, self.modalities, self.image_size))
            self.cache_misses += 1
        meta = json.loads(meta_path.read_text())
        available = tuple(bool(a) for a in meta["available"])
        return _Entry(subject.name, folder, available, int(meta["num_slices"]), tuple(meta["items"]),
                      bool(meta["has_seg"]))

    def arrays(self, entry: int) -> dict[str, np.ndarray]:
        """Read-only memory maps ``(N, H, W)`` of one subject's targets ``m``, inputs ``m.input`` (and
        ``seg``), opened lazily."""
        if entry in self._open:
            self._open.move_to_end(entry)
            return self._open[entry]
        e = self.entries[entry]
        maps = {}
        for m, present in zip(self.modalities, e.available):
            if present:
                maps[m] = np.load(e.folder / f"{m}.npy", mmap_mode="r")
                maps[f"{m}.input"] = np.load(e.folder / f"{m}.input.npy", mmap_mode="r")
        if e.has_seg:
            maps["seg"] = np.load(e.folder / "seg.npy", mmap_mode="r")
        self._open[entry] = maps
        if len(self._open) > _OPEN_SUBJECTS:
            self._open.popitem(last=False)
        return maps

    def meta(self, entry: int) -> dict:
        """The cached metadata of one subject (slice geometry, harmonization parameters, ...)."""
        return json.loads((self.entries[entry].folder / "meta.json").read_text())

    def __getstate__(self) -> dict:
        # DataLoader workers reopen their own memory maps rather than pickling mapped arrays.
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    # --- items ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._entry_of.size)

    def __getitem__(self, index: int) -> dict:
        entry, k = int(self._entry_of[index]), int(self._slice_of[index])
        e = self.entries[entry]
        maps = self.arrays(entry)
        size = self.image_size
        M = len(self.modalities)
        stacked = torch.zeros((2 * M, size, size), dtype=torch.float32)  # targets, then inputs
        for j, (modality, present) in enumerate(zip(self.modalities, e.available)):
            if present:
                stacked[j] = torch.from_numpy(np.array(maps[modality][k], dtype=np.float32))
                stacked[M + j] = torch.from_numpy(np.array(maps[f"{modality}.input"][k], dtype=np.float32))
        if e.has_seg:
            seg = torch.from_numpy(np.array(maps["seg"][k], dtype=np.int64))
        else:
            seg = torch.zeros((size, size), dtype=torch.long)
        if self.augment:  # one transform for inputs and targets alike
            stacked, seg = augment_sample(stacked, seg, self.cfg)
        return {
            "inputs": stacked[M:],
            "targets": stacked[:M],
            "available": torch.tensor(e.available, dtype=torch.bool),
            "seg": seg,
            "has_seg": e.has_seg,
            "subject": e.name,
            "slice": k,
        }


# --------------------------------------------------------------------------------------------------
# Augmentation and sampling
# --------------------------------------------------------------------------------------------------


def augment_sample(
    images: torch.Tensor, seg: torch.Tensor, cfg: DataConfig, generator: Optional[torch.Generator] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random flip + rotation/zoom/shift shared by all modalities ``(M, H, W)`` and labels ``(H, W)``.

    Images are resampled bilinearly, labels with nearest neighbour; zeros enter from outside, so a
    missing (all-zero) modality stays all zero.
    """
    import torch.nn.functional as F

    def uniform(a: float) -> float:
        return float((torch.rand((), generator=generator) * 2 - 1) * a)

    if cfg.augment_flip and float(torch.rand((), generator=generator)) < 0.5:
        # H is the first in-plane axis, left-right for axial and coronal slices of RAS-like volumes.
        images, seg = images.flip(-2), seg.flip(-2)
    angle = np.radians(uniform(cfg.augment_rotation))
    zoom = 1.0 + uniform(cfg.augment_scale)
    shift = (2 * uniform(cfg.augment_translation), 2 * uniform(cfg.augment_translation))
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    theta = torch.tensor([[cos, -sin, shift[0]], [sin, cos, shift[1]]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, (1, 1, *images.shape[-2:]), align_corners=False)
    images = F.grid_sample(images[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    seg = F.grid_sample(seg[None, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return images, seg[0, 0].long()


def pattern_balanced_weights(dataset: SliceDataset) -> torch.Tensor:
    """Per-item weights ``(N,)`` that make every availability pattern equally likely overall
    (weight of an item = 1 / number of items sharing its pattern)."""
    patterns = np.asarray(dataset.sample_patterns)
    counts = np.bincount(patterns)
    return torch.as_tensor(1.0 / counts[patterns], dtype=torch.double)


def pattern_balanced_sampler(
    dataset: SliceDataset, num_samples: Optional[int] = None, generator: Optional[torch.Generator] = None
) -> Sampler:
    """A DataLoader sampler drawing with replacement by :func:`pattern_balanced_weights`."""
    weights = pattern_balanced_weights(dataset)
    return WeightedRandomSampler(weights, num_samples or len(dataset), replacement=True, generator=generator)
