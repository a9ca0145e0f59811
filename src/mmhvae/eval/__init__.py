"""Evaluation (DESIGN §5): metrics on volumes, offline LPIPS, paper-style tables, paired statistics, figures.

Typical use by ``mmhvae evaluate``::

    from mmhvae.eval import MetricAccumulator, load_lpips, score_volume, paper_table, write_csv

    lpips = load_lpips()                      # None => LPIPS reported as unavailable
    acc = MetricAccumulator()
    acc.add_scores("ours", "us+t2", "flair", subject, score_volume(pred, truth, axis=2, lpips_model=lpips))
    write_csv(acc.rows(), out / "metrics.csv")
    (out / "table.md").write_text(paper_table(acc, modalities=["us", "t2", "cet1", "flair"]))
"""

from mmhvae.eval.figures import LatentPCA, latent_pca, subset_grid, temperature_sweep
from mmhvae.eval.lpips import LPIPS, load_lpips
from mmhvae.eval.metrics import (
    METRICS,
    MetricAccumulator,
    MetricRecord,
    MetricSpec,
    foreground_slices,
    lpips_slices,
    psnr,
    resolve_data_range,
    score_volume,
    ssim2d_slices,
    ssim3d,
)
from mmhvae.eval.stats import PairedTest, bonferroni, paired_wilcoxon
from mmhvae.eval.tables import paper_table, read_csv, write_csv

__all__ = [
    "LPIPS",
    "METRICS",
    "LatentPCA",
    "MetricAccumulator",
    "MetricRecord",
    "MetricSpec",
    "PairedTest",
    "bonferroni",
    "foreground_slices",
    "latent_pca",
    "load_lpips",
    "lpips_slices",
    "paired_wilcoxon",
    "paper_table",
    "psnr",
    "read_csv",
    "resolve_data_range",
    "score_volume",
    "ssim2d_slices",
    "ssim3d",
    "subset_grid",
    "temperature_sweep",
    "write_csv",
]
