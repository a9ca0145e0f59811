"""PNG figures of the evaluation: subset grids (paper Fig. 3), latent PCA (Fig. 4), temperature sweep (Fig. 5).

Figures are drawn on a bare ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state, safe in
worker processes) with every tile placed in pixels, so the PNG size is exact and documented:

    width  = LABEL_PX + n_columns · tile_px        height = TITLE_PX + n_rows · tile_px
             (+ TITLE_PX when a figure title is given)

Images are 2D arrays ``(H, W)`` shown as given (row 0 at the top). One modality keeps one grey
window (0.5–99.5 percentiles of its ground truth, else of its input) in every tile, so brightness
differences between inputs, syntheses and ground truth are real, not display artefacts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from mmhvae.atomic import atomic_write

TITLE_PX = 28  # band above the tiles for column headers
LABEL_PX = 104  # band left of the tiles for row labels
GAP_PX = 2  # blank border inside each tile, so neighbouring images stay distinguishable
DPI = 100
MISSING_GREY = 0.85


class _Canvas:
    """A figure of ``n_rows × n_cols`` square tiles of ``tile_px`` pixels with header and label bands."""

    def __init__(self, n_rows: int, n_cols: int, tile_px: int, title: Optional[str] = None) -> None:
        if n_rows < 1 or n_cols < 1:
            raise ValueError(f"a figure needs at least one row and one column, got {n_rows}×{n_cols}")
        self.tile, self.top = int(tile_px), TITLE_PX * (2 if title else 1)
        self.width, self.height = LABEL_PX + n_cols * self.tile, self.top + n_rows * self.tile
        self.fig = Figure(figsize=(self.width / DPI, self.height / DPI), dpi=DPI, facecolor="white")
        if title:
            self.fig.text(0.5, 1 - (TITLE_PX / 2) / self.height, title, ha="center", va="center", fontsize=10, weight="bold")

    def axes(self, row: int, col: int):
        left = LABEL_PX + col * self.tile + GAP_PX
        bottom = self.height - self.top - (row + 1) * self.tile + GAP_PX
        size = self.tile - 2 * GAP_PX
        ax = self.fig.add_axes((left / self.width, bottom / self.height, size / self.width, size / self.height))
        ax.set_axis_off()
        return ax

    def column_title(self, col: int, text: str) -> None:
        x = (LABEL_PX + (col + 0.5) * self.tile) / self.width
        self.fig.text(x, 1 - (self.top - TITLE_PX / 2) / self.height, text, ha="center", va="center", fontsize=8)

    def row_label(self, row: int, text: str) -> None:
        y = 1 - (self.top + (row + 0.5) * self.tile) / self.height
        self.fig.text(4 / self.width, y, text, ha="left", va="center", fontsize=8)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write(path, lambda tmp: self.fig.savefig(tmp, format="png", dpi=DPI, facecolor="white"))
        return path


def _window(*candidates: Optional[np.ndarray]) -> tuple[float, float]:
    """Grey window (0.5, 99.5 percentiles) of the first image given; (0, 1) for a constant image."""
    for img in candidates:
        if img is not None:
            lo, hi = np.percentile(np.asarray(img, dtype=np.float64), [0.5, 99.5])
            return (float(lo), float(hi)) if hi > lo else (float(lo), float(lo) + 1.0)
    return 0.0, 1.0


def _show(ax, img: np.ndarray, window: tuple[float, float], cmap: str = "gray") -> None:
    img = np.asarray(img)
    if img.ndim != 2:
        raise ValueError(f"figures show 2D images (H, W), got shape {img.shape}")
    ax.imshow(img, cmap=cmap, vmin=window[0], vmax=window[1], interpolation="nearest")


def _missing(ax, text: str = "—") -> None:
    ax.set_facecolor((MISSING_GREY,) * 3)
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="0.4", transform=ax.transAxes)


def _wrap(name: str) -> str:
    return name.replace("+", "+\n")


def subset_grid(
    inputs: Mapping[str, np.ndarray],
    rows: Sequence[tuple[str, Mapping[str, np.ndarray]]],
    ground_truth: Mapping[str, np.ndarray],
    path: str | Path,
    modalities: Optional[Sequence[str]] = None,
    targets: Optional[Sequence[str]] = None,
    labels: Optional[Mapping[str, str]] = None,
    tile_px: int = 128,
    title: Optional[str] = None,
) -> Path:
    """Inputs | synthesized, one row per input subset, and a last row with the ground truth.

    ``inputs``: observed 2D images ``(H, W)`` by modality; ``rows``: ``(subset_name, {target:
    synthesized (H, W)})`` with subset names as in :func:`mmhvae.subsets.subset_name` (``"us+t2"``);
    ``ground_truth``: target images by modality (a target without one shows a grey "n/a" tile).
    Columns: one per modality of ``modalities`` (default: ``inputs``' keys; modalities not in the
    subset are grey "—"), then one per target. PNG size: see the module docstring
    (``len(rows) + 1`` rows, ``len(modalities) + len(targets)`` columns).
    """
    modalities = list(modalities or inputs)
    targets = list(targets or dict.fromkeys(t for _, synth in rows for t in synth))
    labels = dict(labels or {})
    canvas = _Canvas(len(rows) + 1, len(modalities) + len(targets), tile_px, title)
    windows = {m: _window(ground_truth.get(m), inputs.get(m)) for m in dict.fromkeys(modalities + targets)}
    # Inputs are shown in their own (acquired, per-image scaled) window: they are not harmonized.
    input_windows = {m: _window(inputs.get(m), ground_truth.get(m)) for m in modalities}
    for col, m in enumerate(modalities):
        canvas.column_title(col, f"input {labels.get(m, m)}")
    for col, t in enumerate(targets, start=len(modalities)):
        canvas.column_title(col, f"synth. {labels.get(t, t)}")
    for row, (subset, synthesized) in enumerate(rows):
        given = {p.strip() for p in subset.split("+")}
        if not given <= set(modalities):
            raise ValueError(f"subset {subset!r} names modalities outside the input columns {modalities}")
        canvas.row_label(row, _wrap("+".join(labels.get(m, m) for m in modalities if m in given)))
        for col, m in enumerate(modalities):
            ax = canvas.axes(row, col)
            if m not in given:
                _missing(ax)
            elif m not in inputs:
                raise ValueError(f"subset {subset!r} uses input {m!r}, but no image was given for it")
            else:
                _show(ax, inputs[m], input_windows[m])
        _target_cells(canvas, row, len(modalities), targets, synthesized, windows, "not run")
    last = len(rows)
    canvas.row_label(last, "ground\ntruth")
    for col in range(len(modalities)):
        canvas.axes(last, col)  # left blank: the inputs row above already shows acquired images
    _target_cells(canvas, last, len(modalities), targets, ground_truth, windows, "n/a")
    return canvas.save(path)


def _target_cells(canvas, row: int, start: int, targets, images, windows, missing: str) -> None:
    """One cell per target from column ``start`` of ``row``: its image in its window, else ``missing``."""
    for col, t in enumerate(targets, start=start):
        ax = canvas.axes(row, col)
        if t in images:
            _show(ax, images[t], windows[t])
        else:
            _missing(ax, missing)


def temperature_sweep(
    images_by_temperature: Mapping[float, np.ndarray | Sequence[np.ndarray]],
    path: str | Path,
    title: Optional[str] = None,
    conditioning: Optional[Mapping[str, np.ndarray]] = None,
    ground_truth: Optional[np.ndarray] = None,
    show_std: bool = True,
    tile_px: int = 128,
) -> Path:
    """Samples at several temperatures τ (paper Fig. 5): one column per τ (ascending), one row per sample.

    Values are one image ``(H, W)`` or samples ``(S, H, W)`` / a list of ``(H, W)``. Optional
    columns: the ``conditioning`` inputs first, the ``ground_truth`` last (both in the first row).
    With ``show_std`` and at least two samples somewhere, a last row shows the pixel-wise standard
    deviation across samples (the diversity that τ controls), on one colour scale for all τ.
    """
    if not images_by_temperature:
        raise ValueError("temperature_sweep needs at least one temperature")
    temps = sorted(images_by_temperature, key=float)
    samples = {t: _as_stack(images_by_temperature[t]) for t in temps}
    conditioning = dict(conditioning or {})
    n_samples = max(s.shape[0] for s in samples.values())
    with_std = show_std and n_samples > 1
    extra = [ground_truth] if ground_truth is not None else []
    canvas = _Canvas(n_samples + int(with_std), len(conditioning) + len(temps) + len(extra), tile_px, title)
    window = _window(ground_truth, np.concatenate([s.ravel() for s in samples.values()]))
    for col, (name, img) in enumerate(conditioning.items()):
        canvas.column_title(col, f"input {name}")
        _show(canvas.axes(0, col), img, _window(img))
        for row in range(1, n_samples + int(with_std)):
            canvas.axes(row, col)
    first = len(conditioning)
    for j, t in enumerate(temps):
        canvas.column_title(first + j, f"τ = {float(t):g}")
        for row in range(n_samples):
            ax = canvas.axes(row, first + j)
            if row < samples[t].shape[0]:
                _show(ax, samples[t][row], window)
            else:
                _missing(ax, "")
    for row in range(n_samples):
        canvas.row_label(row, f"sample {row + 1}")
    if with_std:
        stds = {t: s.std(axis=0) for t, s in samples.items() if s.shape[0] > 1}
        vmax = max(float(s.max()) for s in stds.values()) or 1.0
        canvas.row_label(n_samples, "std over\nsamples")
        for j, t in enumerate(temps):
            ax = canvas.axes(n_samples, first + j)
            if t in stds:
                _show(ax, stds[t], (0.0, vmax), cmap="magma")
            else:
                _missing(ax, "1 sample")
    if ground_truth is not None:
        col = first + len(temps)
        canvas.column_title(col, "ground truth")
        _show(canvas.axes(0, col), ground_truth, window)
        for row in range(1, n_samples + int(with_std)):
            canvas.axes(row, col)
    return canvas.save(path)


def _as_stack(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """One ``(H, W)`` image or several samples as ``(S, H, W)`` float64."""
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise ValueError(f"expected an image (H, W) or samples (S, H, W), got shape {arr.shape}")
    return arr


@dataclass(frozen=True)
class LatentPCA:
    """A PCA fitted jointly on pixel features of all subsets: ``mean`` (C,), ``components``
    (k, C) with k = min(3, C), ``explained_variance_ratio`` (k,), and the written figure ``path``."""

    path: Path
    mean: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Project pixel features ``(N, C)`` onto the components: ``(N, k)``."""
        return (np.asarray(features, dtype=np.float64) - self.mean) @ self.components.T


def latent_pca(
    latents_by_subset: Mapping[str, np.ndarray],
    path: str | Path,
    labels: Optional[Mapping[str, str]] = None,
    n_pixels: int = 10_000,
    seed: int = 0,
    tile_px: int = 160,
) -> LatentPCA:
    """Alignment of z_1 across input subsets (paper §6.1, Fig. 4): one PCA for all subsets.

    Values are either latent maps ``(C, H, W)`` (one slice) — shown as PC1 in grey and PCs 1–3 as
    RGB, one column per subset — or pixel features ``(N, C)``, shown as a PC1/PC2 scatter coloured
    by subset (a single tile of ``4·tile_px``). The PCA is fitted on ``n_pixels`` pixels drawn at
    random (``seed``) from all subsets together, and colours use one scale for every subset, so
    aligned latents give similar pictures. Components are signed so their largest loading is positive.
    """
    if not latents_by_subset:
        raise ValueError("latent_pca needs latents of at least one subset")
    arrays = {name: np.asarray(z, dtype=np.float64) for name, z in latents_by_subset.items()}
    ndims = {z.ndim for z in arrays.values()}
    channels = {z.shape[0] if z.ndim == 3 else z.shape[-1] for z in arrays.values()}
    if not (ndims <= {2} or ndims <= {3}) or len(channels) != 1:
        shapes = [z.shape for z in arrays.values()]
        raise ValueError(f"latents must all be maps (C, H, W) or all features (N, C) with one C; got {shapes}")
    features = {name: z.reshape(z.shape[0], -1).T if z.ndim == 3 else z for name, z in arrays.items()}
    pooled = np.concatenate(list(features.values()))
    rng = np.random.default_rng(seed)
    sample = pooled[rng.choice(len(pooled), size=min(n_pixels, len(pooled)), replace=False)]
    mean = sample.mean(axis=0)
    _, sing, vt = np.linalg.svd(sample - mean, full_matrices=False)
    k = min(3, vt.shape[0])
    comps = vt[:k] * np.sign(vt[:k][np.arange(k), np.abs(vt[:k]).argmax(axis=1)])[:, None]
    ratio = (sing**2 / max(float((sing**2).sum()), 1e-30))[:k]
    labels = dict(labels or {})
    projected = {name: (f - mean) @ comps.T for name, f in features.items()}
    scale = np.percentile((sample - mean) @ comps.T, [1, 99], axis=0)  # (2, k): shared colour scale
    if ndims == {3}:
        canvas = _Canvas(2, len(arrays), tile_px)
        canvas.row_label(0, f"PC1\n({100 * ratio[0]:.0f}% var.)")
        canvas.row_label(1, "PC1-3\nas RGB")
        for col, (name, z) in enumerate(arrays.items()):
            canvas.column_title(col, labels.get(name, name))
            pcs = projected[name].reshape(z.shape[1], z.shape[2], k)
            unit = np.clip((pcs - scale[0]) / np.maximum(scale[1] - scale[0], 1e-12), 0, 1)
            _show(canvas.axes(0, col), unit[..., 0], (0.0, 1.0))
            rgb = np.concatenate([unit, np.zeros(unit.shape[:2] + (3 - k,))], axis=-1)
            canvas.axes(1, col).imshow(rgb, interpolation="nearest")
    else:
        canvas = _Canvas(4, 4, tile_px)
        left, bottom, right = 64, 48, 16  # pixels for tick labels and axis titles
        w, h = canvas.width, canvas.height
        ax = canvas.fig.add_axes((left / w, bottom / h, (w - left - right) / w, (h - bottom - TITLE_PX) / h))
        ax.set_title("z_1 pixel features, joint PCA", fontsize=9)
        for name, p in projected.items():
            shown = p[rng.choice(len(p), size=min(2000, len(p)), replace=False)]
            ax.scatter(shown[:, 0], shown[:, 1 if k > 1 else 0], s=3, alpha=0.5, label=labels.get(name, name))
        ax.set_xlabel(f"PC1 ({100 * ratio[0]:.0f}% var.)")
        ax.set_ylabel(f"PC2 ({100 * ratio[1]:.0f}% var.)" if k > 1 else "PC1")
        ax.legend(fontsize=7, markerscale=3)
    return LatentPCA(canvas.save(path), mean, comps, ratio)


def training_curves(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    path: str | Path,
    ylabel: str = "validation PSNR (dB)",
    title: Optional[str] = None,
) -> Path:
    """Line plot of one scalar against training step, one line per run (e.g. validation PSNR per method)."""
    if not curves:
        raise ValueError("training_curves needs at least one curve")
    fig = Figure(figsize=(8, 5), dpi=DPI)
    ax = fig.add_subplot(1, 1, 1)
    styles = ("-", "--", ":", "-.")
    for i, (name, points) in enumerate(curves.items()):
        if not points:
            continue
        steps, values = zip(*sorted(points))
        ax.plot(steps, values, styles[(i // 10) % len(styles)], marker="o", markersize=3, label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, facecolor="white"))
    return path
