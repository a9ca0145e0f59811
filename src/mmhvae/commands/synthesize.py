"""``mmhvae synthesize``: every modality from any subset of NIfTI inputs."""

from __future__ import annotations

import argparse


def _input(value: str) -> tuple[str, str]:
    if "=" not in value:
        raise argparse.ArgumentTypeError(f"--input {value!r}: expected MODALITY=PATH, e.g. t2=t2.nii.gz")
    name, path = value.split("=", 1)
    return name.strip(), path.strip()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synthesize",
        help="synthesize every modality from the given inputs",
        description="Synthesize all modalities (or --targets) from any non-empty subset of co-registered volumes.",
    )
    p.add_argument("--checkpoint", required=True, help="run folder or .safetensors generator checkpoint")
    p.add_argument("--input", action="append", type=_input, required=True, metavar="MOD=PATH",
                   help="an input volume; repeat for several modalities")
    p.add_argument("--out", required=True, help="output folder: <modality>.nii.gz (+ <modality>_std.nii.gz)")
    p.add_argument("--targets", nargs="+", help="modalities to write [all]")
    p.add_argument("--temperature", type=float, default=None, help="tau (0 = deterministic; paper 0.5) [config]")
    p.add_argument("--samples", type=int, default=1, help="K samples: writes their mean and voxel-wise std")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from mmhvae.data.nifti import write_volume
    from mmhvae.infer import load_model, synthesize_volume

    names = [n for n, _ in args.input]
    if len(set(names)) != len(names):
        raise ValueError(f"a modality is given twice in --input: {names}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model = load_model(args.checkpoint, device)
    tau = model.config.eval.temperature if args.temperature is None else args.temperature
    results = synthesize_volume(
        model, dict(args.input), targets=args.targets, temperature=tau, samples=args.samples,
        batch_size=args.batch_size, seed=args.seed, progress=True,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, img in results.items():
        path = out / f"{name}.nii.gz"
        write_volume(path, img.get_fdata(dtype="float32"), img.affine, img.header)
        print(f"wrote {path}")
    return 0
