"""Our MVAE and MoPoE against the `multivae` library's (PyPI, Apache-2.0) on identical slices.

    python benchmarks/multivae_compare.py --out /tmp/multivae-compare --steps 400

1. Builds a separate virtual environment (``--venv``, default ``/tmp/multivae-venv``) with
   ``multivae==1.0.3`` and ``pythae==0.1.2`` (installed without their dependency lists), the torch
   this project runs on (``torch==2.13.0``) and the few packages the library imports. ``multivae`` is
   never a dependency of this package. The library imports ``torchvision`` at import time for its
   dataset classes, metrics and trainer only; its models do not use it, and torchvision's PyPI wheels
   do not load against a CPU torch, so an import-time stand-in is written there instead (its names
   exist; using one fails). We train with our own loop, not the library's trainer.
2. Generates the built-in cohort (``mmhvae make-cohort``'s generator) and exports its train and test
   slices with the project's preprocessing (:class:`mmhvae.data.dataset.SliceDataset`, ``small``
   preset): the harmonized slices are both what the encoders see and what is scored, for every model.
3. Trains four models with one thread each, two at a time: ours (``apply_method(small, "mvae" /
   "mopoe")``, the project trainer) and the library's ``MVAE`` and ``MoPoE`` with convolutional
   encoders / decoders sized to the same parameter count, the same latent size (32), the same
   likelihood weighting (Gaussian, loss = sum over modalities of the per-pixel MSE + 1e-3 x KL per
   pixel, i.e. ``rescale_factors = 2 / (H W)`` and ``beta = 1e-3 / (H W)``), the same optimizer
   (Adamax 2e-3, cosine to 1e-4, clip 200), batch size and batch sequence, and the same step budget.
   Both are scored at their final step (no model selection on either side).
4. Scores every model with our metric code (:func:`mmhvae.eval.metrics.score_volume`, PSNR over the
   foreground slices of each test subject's stack) on: self-reconstruction ({t} -> t), all-input
   (every available modality -> t), all-others (every available modality but t -> t) and
   single-input synthesis ({s} -> t, s != t); posterior means (tau = 0) on both sides.
   Writes ``OUT/report.md`` (per-cell table, paired counts, seconds per step) and ``OUT/scores.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MULTIVAE = "multivae==1.0.3"
PYTHAE = "pythae==0.1.2"
TORCH = "torch==2.13.0"
# What multivae/pythae import on the model path (their full dependency lists also pull torchvision,
# torchmetrics, nltk and matplotlib for datasets, metrics and plots).
LIB_DEPS = ["numpy", "scipy", "scikit-learn", "pandas", "tqdm", "typing_extensions", "pydantic>=2",
            "cloudpickle", "imageio", "pillow", "matplotlib", "nltk"]
TORCHVISION_STANDIN = '''"""Import-time stand-in for torchvision (benchmarks/multivae_compare.py): names exist, using them fails."""


class _Unavailable:
    def __init__(self, *args, **kwargs):  # default arguments such as transform=ToTensor() are built at import
        pass

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__}: torchvision is not installed in this environment")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (_Unavailable,), {})
'''
KL_WEIGHT = 1e-3  # our lambda_KL (nats per pixel), the small preset's value


# ------------------------------------------------------------------------------------------------
# The separate environment
# ------------------------------------------------------------------------------------------------


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    check = [str(python), "-c", "from multivae.models import MVAE, MoPoE"]
    if python.exists() and subprocess.run(check, cwd="/", capture_output=True).returncode == 0:
        return python
    print(f"[multivae] creating {venv}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + [TORCH], check=True, cwd="/")
    subprocess.run(pip + ["--no-deps", MULTIVAE, PYTHAE], check=True, cwd="/")
    subprocess.run(pip + LIB_DEPS, check=True, cwd="/")
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, cwd="/").stdout.strip()
    for rel in ["__init__.py", "transforms/__init__.py", "datasets/__init__.py", "datasets/utils.py",
                "utils.py", "models/__init__.py"]:
        path = Path(site) / "torchvision" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(TORCHVISION_STANDIN)
    subprocess.run(check, check=True, cwd="/")
    return python


# ------------------------------------------------------------------------------------------------
# Data: the built-in cohort through the project's preprocessing
# ------------------------------------------------------------------------------------------------


def export_slices(out: Path, subjects: int, steps: int, seed: int) -> Path:
    import numpy as np
    import torch

    from mmhvae.config import preset
    from mmhvae.data.cohort import Cohort
    from mmhvae.data.dataset import SliceDataset
    from mmhvae.data.phantom import make_cohort
    from mmhvae.train.batches import StepBatches

    path = out / "slices.npz"
    if path.exists():
        return path
    cfg = preset("small")
    size = cfg.model.image_size
    manifest = make_cohort(out / "cohort", subjects=subjects, seed=seed, shape=(size, size, max(16, size // 2)))
    cfg.data.cohort = str(manifest)
    cfg.data.cache_dir = str(out / "cache")
    cohort = Cohort.load(cfg.data.cohort, modalities=cfg.model.modalities)
    arrays = {}
    for split in ("train", "test"):
        ds = SliceDataset(cohort, cohort.select(split), cfg.data, cfg.model.modalities, size, augment=False)
        items = [ds[i] for i in range(len(ds))]
        arrays[f"{split}_x"] = torch.stack([it["targets"] for it in items]).numpy().astype(np.float32)
        arrays[f"{split}_available"] = torch.stack([it["available"] for it in items]).numpy()
        arrays[f"{split}_subject"] = np.array([it["subject"] for it in items])
    # The batch sequence of our trainer (StepBatches, seed 0), replayed by the library's loop.
    from mmhvae.train.batches import ArraySliceDataset

    train = ArraySliceDataset(torch.from_numpy(arrays["train_x"]), torch.from_numpy(arrays["train_available"]))
    batches = StepBatches(train, cfg.train.batch_size, cfg.train.seed, 0, 1, None)
    arrays["batches"] = np.array([batches.indices(s) for s in range(steps)], dtype=np.int64)
    np.savez(path, modalities=np.array(cfg.model.modalities), **arrays)
    return path


def requests(available):
    """The input settings to synthesize from: name -> observed mask (N, M) (rows with none are skipped)."""
    import numpy as np

    M = available.shape[1]
    out = {}
    for j in range(M):
        out[f"single{j}"] = available & np.eye(M, dtype=bool)[j][None]
    out["all"] = available.copy()
    for t in range(M):
        out[f"others{t}"] = available & ~np.eye(M, dtype=bool)[t][None]
    return out


# ------------------------------------------------------------------------------------------------
# Our models
# ------------------------------------------------------------------------------------------------


def run_ours(method: str, data: Path, out: Path, steps: int, overrides=()) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from mmhvae.config import apply_overrides, preset
    from mmhvae.methods import apply_method
    from mmhvae.train.batches import ArraySliceDataset
    from mmhvae.train.trainer import Trainer

    d = np.load(data)
    cfg = apply_overrides(apply_method(preset("small"), method), list(overrides))
    cfg.train.steps = steps
    cfg.train.draws = 1  # one sample of the posterior per step, as the library (MVAE ignores draws)
    cfg.train.checkpoint_every = steps
    cfg.train.log_every = max(1, steps // 10)
    cfg.train.device = "cpu"
    train = ArraySliceDataset(torch.from_numpy(d["train_x"]), torch.from_numpy(d["train_available"]))
    trainer = Trainer(cfg, out / f"ours-{method}", train, None, progress=False)
    t0 = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - t0
    model = trainer.model.eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.from_numpy(d["test_x"])
    preds = {}
    with torch.no_grad():
        for name, obs in requests(d["test_available"]).items():
            obs = torch.from_numpy(obs)
            keep = obs.any(1)
            y = torch.full(x.shape, float("nan"))
            for start in range(0, int(keep.sum()), 64):
                idx = keep.nonzero().flatten()[start:start + 64]
                y[idx] = model(x[idx], obs[idx], temperature=0.0).reconstructions.float()
            preds[name] = y.numpy().astype(np.float16)
    np.savez(out / f"pred-ours-{method}.npz", **preds)
    (out / f"time-ours-{method}.json").write_text(json.dumps({"s_per_step": seconds / steps, "params": params}))


# ------------------------------------------------------------------------------------------------
# The library's models (runs in the separate environment; imports neither mmhvae nor our code)
# ------------------------------------------------------------------------------------------------


def _lib_networks(M: int, size: int, latent: int, width: int):
    import torch
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from torch import nn

    chans = [width, 2 * width, 4 * width, 8 * width]
    grid = size // 2 ** len(chans)

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            layers, c_in = [], 1
            for c in chans:  # 4x4 stride-2 convolutions (DCGAN-style), SiLU
                layers += [nn.Conv2d(c_in, c, 4, 2, 1), nn.SiLU()]
                c_in = c
            self.conv = nn.Sequential(*layers, nn.Flatten())
            self.mu = nn.Linear(c_in * grid * grid, latent)
            self.logvar = nn.Linear(c_in * grid * grid, latent)

        def forward(self, x):
            h = self.conv(x)
            return ModelOutput(embedding=self.mu(h), log_covariance=self.logvar(h))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(latent, chans[-1] * grid * grid)
            layers = []
            rev = chans[::-1] + [chans[0]]
            for c_in, c in zip(rev[:-1], rev[1:]):
                layers += [nn.SiLU(), nn.ConvTranspose2d(c_in, c, 4, 2, 1)]
            self.deconv = nn.Sequential(*layers, nn.SiLU(), nn.Conv2d(chans[0], 1, 3, padding=1))

        def forward(self, z):
            h = self.fc(z).view(z.shape[0], chans[-1], grid, grid)
            return ModelOutput(reconstruction=self.deconv(h))

    return Encoder, Decoder


def run_library(method: str, data: Path, out: Path, steps: int, target_params: int) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    from multivae.data.datasets.base import IncompleteDataset, MultimodalBaseDataset
    from multivae.models import MVAE, MoPoE, MVAEConfig, MoPoEConfig

    d = np.load(data)
    mods = [str(m) for m in d["modalities"]]
    M, size = len(mods), d["train_x"].shape[-1]
    latent = 32
    # The width whose parameter count is nearest ours.
    best = None
    for width in range(2, 33):
        Enc, Dec = _lib_networks(M, size, latent, width)
        n = M * sum(p.numel() for p in list(Enc().parameters()) + list(Dec().parameters()))
        if best is None or abs(n - target_params) < abs(best[1] - target_params):
            best = (width, n)
    Enc, Dec = _lib_networks(M, size, latent, best[0])
    common = dict(
        n_modalities=M, latent_dim=latent, input_dims={m: (1, size, size) for m in mods},
        uses_likelihood_rescaling=True, rescale_factors={m: 2.0 / (size * size) for m in mods},
        decoders_dist={m: "normal" for m in mods},
    )
    if method == "mvae":
        cfg = MVAEConfig(**common, k=1, warmup=0, beta=KL_WEIGHT / (size * size))
        model = MVAE(cfg, {m: Enc() for m in mods}, {m: Dec() for m in mods})
    else:
        cfg = MoPoEConfig(**common, beta=KL_WEIGHT / (size * size))
        model = MoPoE(cfg, {m: Enc() for m in mods}, {m: Dec() for m in mods})
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    floor = 1e-4 / 2e-3
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    x_all = torch.from_numpy(d["train_x"])
    a_all = torch.from_numpy(d["train_available"])
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.from_numpy(d["batches"][step])
        x, a = x_all[idx], a_all[idx]
        batch = IncompleteDataset(data={m: x[:, j : j + 1] for j, m in enumerate(mods)},
                                  masks={m: a[:, j] for j, m in enumerate(mods)})
        opt.zero_grad(set_to_none=True)
        loss = model(batch, epoch=1).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 200.0)
        opt.step()
        sched.step()
        if (step + 1) % max(1, steps // 10) == 0:
            print(f"[library {method}] step {step + 1} loss {loss.item():.4f}", flush=True)
    seconds = time.perf_counter() - t0
    model.eval()
    x = torch.from_numpy(d["test_x"])
    preds = {}
    with torch.no_grad():
        for name, obs in requests(d["test_available"]).items():
            y = torch.full(x.shape, float("nan"))
            for pattern in np.unique(obs, axis=0):
                if not pattern.any():
                    continue
                rows = torch.from_numpy(np.nonzero((obs == pattern).all(1))[0])
                data = MultimodalBaseDataset(data={m: x[rows, j : j + 1] for j, m in enumerate(mods)})
                cond = [m for m, on in zip(mods, pattern) if on]
                z = model.encode(data, cond_mod=cond, return_mean=True).z
                for j, m in enumerate(mods):
                    y[rows, j] = model.decoders[m](z).reconstruction[:, 0].float()
            preds[name] = y.numpy().astype(np.float16)
    np.savez(out / f"pred-library-{method}.npz", **preds)
    (out / f"time-library-{method}.json").write_text(
        json.dumps({"s_per_step": seconds / steps, "params": params, "width": best[0]}))


# ------------------------------------------------------------------------------------------------
# Scoring with our metric code
# ------------------------------------------------------------------------------------------------


def cells(M: int):
    """(cell label, request name, target index)."""
    out = []
    for t in range(M):
        out.append(("self", f"single{t}", t))
        out.append(("all-input", "all", t))
        out.append(("all-others", f"others{t}", t))
        for s in range(M):
            if s != t:
                out.append((f"from {s}", f"single{s}", t))
    return out


def score(data: Path, out: Path, methods=("mvae", "mopoe")) -> dict:
    import numpy as np

    from mmhvae.eval.metrics import score_volume

    d = np.load(data)
    mods = [str(m) for m in d["modalities"]]
    x, avail, subj = d["test_x"], d["test_available"], d["test_subject"]
    reqs = requests(avail)
    results = {}
    for method in methods:
        preds = {side: np.load(out / f"pred-{side}-{method}.npz") for side in ("ours", "library")}
        rows = {"raw": [], "masked": []}
        for label, req, t in cells(len(mods)):
            if label.startswith("from "):
                label = f"{mods[int(label[5:])]} -> {mods[t]}"
            else:
                label = f"{label} -> {mods[t]}"
            valid = reqs[req].any(1) & avail[:, t]
            per = {(kind, side): [] for kind in rows for side in ("ours", "library")}
            for s in sorted(set(subj[valid])):
                sel = valid & (subj == s)
                target = x[sel, t]
                if not (target > 0).any():
                    continue
                # What `mmhvae synthesize` writes without a brain mask (data.mask_outputs): 0 outside the
                # union of the given inputs' non-background pixels, the same for both sides.
                inside = ((x[sel] != 0) & reqs[req][sel][:, :, None, None]).any(axis=1)
                for side in ("ours", "library"):
                    pred = preds[side][req][sel, t].astype(np.float32)
                    for kind, p in (("raw", pred), ("masked", np.where(inside, pred, np.float32(0)))):
                        per[kind, side].append(
                            score_volume(p, target, axis=0, with_ssim3d=False, with_lpips=False)["psnr"])
            if not per["raw", "ours"]:
                continue
            for kind in rows:
                o, lib = np.array(per[kind, "ours"]), np.array(per[kind, "library"])
                rows[kind].append({"cell": label, "n": len(o), "ours": float(o.mean()), "library": float(lib.mean()),
                                   "wins": int((o > lib).sum())})
        results[method] = rows
    (out / "scores.json").write_text(json.dumps(results, indent=1))
    return results


def report(results: dict, out: Path, steps: int, command: str) -> str:
    lines = [f"Command: `{command}`", ""]
    groups = {"self": lambda c: c.startswith("self"), "all-input": lambda c: c.startswith("all-input"),
              "all-others": lambda c: c.startswith("all-others"),
              "single-input cross-modal": lambda c: not c.startswith(("self", "all"))}
    for method, kinds in results.items():
        t_ours = json.loads((out / f"time-ours-{method}.json").read_text())
        t_lib = json.loads((out / f"time-library-{method}.json").read_text())
        lines += [f"### {method}: ours {t_ours['params']:,} parameters, {t_ours['s_per_step']:.2f} s/step; "
                  f"multivae {t_lib['params']:,} parameters (width {t_lib['width']}), {t_lib['s_per_step']:.2f} s/step",
                  "", "Raw network outputs (raw) and outputs set to 0 outside the given inputs' foreground "
                  "(masked, as `mmhvae synthesize` writes them), PSNR (dB):", "",
                  "| Cell (inputs -> target) | subjects | ours raw | multivae raw | ours - multivae raw "
                  "| ours better raw (subjects) | ours masked | multivae masked | ours - multivae masked |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r, m in zip(kinds["raw"], kinds["masked"]):
            lines.append(f"| {r['cell']} | {r['n']} | {r['ours']:.2f} | {r['library']:.2f} | "
                         f"{r['ours'] - r['library']:+.2f} | {r['wins']}/{r['n']} | {m['ours']:.2f} | "
                         f"{m['library']:.2f} | {m['ours'] - m['library']:+.2f} |")
        lines += ["", "| Group | outputs | cells | mean ours - multivae (dB) | cells ours >= multivae - 0.3 dB "
                  "| cells ours better | subject pairs ours better |", "|---|---|---|---|---|---|---|"]
        for g, f in groups.items():
            for kind, rows in kinds.items():
                sel = [r for r in rows if f(r["cell"])]
                if not sel:
                    continue
                diff = [r["ours"] - r["library"] for r in sel]
                lines.append(f"| {g} | {kind} | {len(sel)} | {sum(diff) / len(diff):+.2f} | "
                             f"{sum(d >= -0.3 for d in diff)}/{len(sel)} | {sum(d > 0 for d in diff)}/{len(sel)} | "
                             f"{sum(r['wins'] for r in sel)}/{sum(r['n'] for r in sel)} |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/multivae-compare"))
    p.add_argument("--venv", type=Path, default=Path("/tmp/multivae-venv"))
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--subjects", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="trainings at once (one thread each)")
    p.add_argument("--methods", default="mvae,mopoe", help="comma-separated: mvae, mopoe")
    p.add_argument("--worker", choices=["ours", "library"], help=argparse.SUPPRESS)
    p.add_argument("--method", choices=["mvae", "mopoe"], help=argparse.SUPPRESS)
    p.add_argument("--params", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--ours-override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for our models (repeatable), e.g. model.head_channels=16")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    data = args.out / "slices.npz"
    if args.worker == "ours":
        run_ours(args.method, data, args.out, args.steps, args.ours_override)
        return 0
    if args.worker == "library":
        run_library(args.method, data, args.out, args.steps, args.params)
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    python = ensure_venv(args.venv)
    export_slices(args.out, args.subjects, args.steps, args.seed)
    from mmhvae.config import apply_overrides, preset
    from mmhvae.methods import apply_method
    from mmhvae.models import build_model

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    jobs = []
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in methods:
        ours_cfg = apply_overrides(apply_method(preset("small"), method), args.ours_override)
        params = sum(q.numel() for q in build_model(ours_cfg.model).parameters())
        common = ["--out", str(args.out), "--steps", str(args.steps), "--method", method]
        common += [f"--ours-override={o}" for o in args.ours_override]
        if not (args.out / f"pred-ours-{method}.npz").exists():
            jobs.append([sys.executable, str(Path(__file__).resolve()), "--worker", "ours", *common])
        if not (args.out / f"pred-library-{method}.npz").exists():
            jobs.append([str(python), str(Path(__file__).resolve()), "--worker", "library", "--params", str(params), *common])
    running = []
    while jobs or running:
        while jobs and len(running) < args.jobs:
            cmd = jobs.pop(0)
            print("[multivae] " + " ".join(cmd[2:]), flush=True)
            running.append(subprocess.Popen(cmd, env=env, cwd="/"))
        time.sleep(2)
        for proc in list(running):
            if proc.poll() is not None:
                running.remove(proc)
                if proc.returncode != 0:
                    raise SystemExit(f"worker failed ({proc.returncode}): {proc.args}")
    results = score(data, args.out, methods)
    command = "python benchmarks/multivae_compare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(report(results, args.out, args.steps, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
