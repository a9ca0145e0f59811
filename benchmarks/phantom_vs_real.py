"""Montage: a built-in subject next to real cases with the same contrasts (issue 16).

Top: the built-in subject's T1, ceT1, T2 and FLAIR (axial, through the tumour) above those of a real
patient of the Ljubljana MS database (CC BY; multiple sclerosis, skull-stripped). Bottom: the built-in ultrasound with T1 and FLAIR cropped to the ultrasound sector, above the
real intra-operative ultrasound of RESECT Case24 (CC BY 4.0; MR resliced into its grid). Both real
cases are under licences that allow showing them with attribution. Needs ../shared/data/real.

    .venv/bin/python benchmarks/phantom_vs_real.py --out docs/phantom_vs_real.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def _ras(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.as_closest_canonical(nib.load(str(path)))
    return np.asanyarray(image.dataobj).astype(np.float32), np.asarray(image.header.get_zooms()[:3])


def _window(image: np.ndarray) -> np.ndarray:
    values = image[image > 0]
    hi = float(np.percentile(values, 99.5)) if values.size else 1.0
    return np.clip(image / max(hi, 1e-6), 0, 1)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmhvae.data.phantom import generate_subject

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/phantom_vs_real.png"))
    parser.add_argument("--subject", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 64])
    args = parser.parse_args()

    s = generate_subject(args.subject, seed=0, shape=tuple(args.shape))
    spacing = np.abs(np.diag(s.affine)[:3])
    z = int(np.argmax((s.seg > 0).sum(axis=(0, 1))))
    case = "LjMS-cs-patient07"
    real_mr = {m: _ras(REAL / case / f"{case}-{f}.nii.gz") for m, f in
               (("t1", "t1"), ("cet1", "t1c"), ("t2", "t2"), ("flair", "flair"))}
    rows = np.flatnonzero(real_mr["t1"][0].any(axis=(0, 1)))
    zr = int(rows[0] + 0.62 * (rows[-1] - rows[0]))  # through the lateral ventricles

    # The ultrasound plane: the axial slice with the largest sector area, cropped to the sector.
    zu = int(np.argmax(s.sector.sum(axis=(0, 1))))
    xs, ys = np.nonzero(s.sector[:, :, zu])
    crop = (slice(max(xs.min() - 3, 0), xs.max() + 4), slice(max(ys.min() - 3, 0), ys.max() + 4), zu)
    resect = REAL / "RESECT-Case24"
    real_us = {m: _ras(resect / f"RESECT-Case24-{m}.nii.gz") for m in ("us", "t1", "flair")}

    fig, axes = plt.subplots(4, 4, figsize=(9.6, 9.6))
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    names = {"t1": "T1", "cet1": "ceT1", "t2": "T2", "flair": "FLAIR", "us": "ultrasound"}
    for c, m in enumerate(("t1", "cet1", "t2", "flair")):
        axes[0, c].imshow(np.rot90(_window(s.images[m])[:, :, z]), cmap="gray", aspect=spacing[1] / spacing[0])
        axes[0, c].set_title(f"built-in {names[m]}", fontsize=9)
        image, zooms = real_mr[m]
        axes[1, c].imshow(np.rot90(_window(image)[:, :, zr]), cmap="gray", aspect=zooms[1] / zooms[0])
        axes[1, c].set_title(f"{case} {names[m]}", fontsize=9)
    for c, m in enumerate(("us", "t1", "flair")):
        image = s.images[m] / 255.0 if m == "us" else _window(s.images[m])
        axes[2, c].imshow(np.rot90(image[crop]), cmap="gray", vmin=0, vmax=1, aspect=spacing[1] / spacing[0])
        axes[2, c].set_title(f"built-in {names[m]} (sector)", fontsize=9)
        volume, zooms = real_us[m]
        shown = volume / 255.0 if m == "us" else _window(volume)
        axes[3, c].imshow(np.rot90(shown[:, :, shown.shape[2] // 2]), cmap="gray", vmin=0, vmax=1,
                          aspect=zooms[1] / zooms[0])
        axes[3, c].set_title(f"RESECT-Case24 {names[m]}", fontsize=9)
    axes[2, 3].imshow(np.rot90(s.images["us"][:, :, zu] / 255.0), cmap="gray", vmin=0, vmax=1,
                      aspect=spacing[1] / spacing[0])
    axes[2, 3].set_title("built-in ultrasound (whole slice)", fontsize=9)
    axes[3, 3].axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=62)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
