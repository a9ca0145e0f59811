"""Where does detail get lost? One slice of one subject through a trained MMHVAE run (issue 18).

For each input subset (all, then each single modality) it prints, on the middle training-size slice:
  * z_1 (the finest latent, the one the image heads read): the spread of its posterior means over the
    foreground, the median posterior standard deviation, and how much high-frequency content the means
    carry (std of their discrete Laplacian / their std; a slice of the input itself is printed last);
  * each output: the std of its Laplacian against the ground truth's, and its L1 error.

A precise z_1 (small sigma) with smooth means and outputs that keep a fraction of the truth's
Laplacian says the network has not learned the detail; a wide sigma says the KL is what blurs.

    python benchmarks/detail_probe.py /tmp/realbench/runs/mmhvae BraTS-unknownID-PR138 \
        [--cohort /tmp/realbench/cohort.csv]

The cohort defaults to the benchmark's ``cohort.csv`` two folders above the run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from mmhvae.data.dataset import preprocess_subject
from mmhvae.data.manifest import read_manifest
from mmhvae.infer import load_model


def laplacian_std(a: torch.Tensor) -> float:
    lap = 4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]
    return float(lap.std())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run folder (or .safetensors) of an MMHVAE model")
    parser.add_argument("subject", help="subject name in the cohort")
    parser.add_argument("--cohort", type=Path, help="manifest CSV [RUN/../../cohort.csv]")
    args = parser.parse_args()

    trained = load_model(args.run)
    net, cfg = trained.network, trained.config
    mods = list(cfg.model.modalities)
    cohort = args.cohort or args.run.parent.parent / "cohort.csv"
    listing = read_manifest(cohort, mods, dict(cfg.data.modality_aliases))
    matches = [s for s in listing.subjects if s.name == args.subject]
    if not matches:
        raise SystemExit(f"{cohort}: no subject {args.subject!r}")
    pre = preprocess_subject(matches[0], cfg.data, mods, cfg.model.image_size)
    present = [m for m in mods if m in pre.inputs]
    k = pre.inputs[present[0]].shape[0] // 2
    size = cfg.model.image_size
    x = torch.zeros(1, len(mods), size, size)
    for j, m in enumerate(mods):
        if m in pre.inputs:
            x[0, j] = torch.from_numpy(np.asarray(pre.inputs[m][k], dtype=np.float32))
    truth = {m: torch.from_numpy(np.asarray(pre.targets[m][k], dtype=np.float32)) for m in present}
    foreground = torch.from_numpy(np.asarray(pre.slices.foreground[k], dtype=bool))

    net.eval()
    subsets = [("all", present)] + [(m, [m]) for m in present]
    with torch.no_grad():
        for name, given in subsets:
            observed = torch.tensor([[m in given for m in mods]])
            out = net(x, observed, temperature=0.0)
            q = out.posteriors[0]
            mu, sigma = q.mu[0], (0.5 * q.logvar[0]).exp()
            print(f"inputs {name}: z_1 per channel")
            print("  mean spread (std over foreground):", [round(float(mu[c][foreground].std()), 3) for c in range(mu.shape[0])])
            print("  posterior sigma (median):         ", [round(float(sigma[c][foreground].median()), 3) for c in range(mu.shape[0])])
            print("  Laplacian std / std of the means: ", [round(laplacian_std(mu[c]) / (float(mu[c].std()) + 1e-8), 3) for c in range(mu.shape[0])])
            for j, m in enumerate(mods):
                if m in truth:
                    rec = out.reconstructions[0, j].float()
                    ratio = laplacian_std(rec) / max(laplacian_std(truth[m]), 1e-8)
                    print(f"  -> {m:6s} Laplacian std {100 * ratio:5.1f} % of the truth's, L1 {float((rec - truth[m]).abs().mean()):.4f}")
    first = x[0, mods.index(present[0])]
    print(f"input {present[0]} itself: Laplacian std / std {laplacian_std(first) / float(first.std()):.3f}")


if __name__ == "__main__":
    main()
