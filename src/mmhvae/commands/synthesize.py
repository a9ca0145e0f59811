"""``mmhvae synthesize``: every modality from any subset of NIfTI inputs."""

from __future__ import annotations

import argparse

from mmhvae.commands.arguments import add_overwrite, positive_int, temperature


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
    p.add_argument("--temperature", type=temperature, default=None,
                   help="tau >= 0 (0 = deterministic; paper 0.5) [config]")
    p.add_argument("--samples", type=positive_int, default=1,
                   help="K >= 1 samples: writes their mean and voxel-wise std")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--mask", default=None, metavar="PATH",
                   help="brain mask on the inputs' grid: bounds the input scaling, as a cohort's mask column")
    p.add_argument("--wm", default=None, metavar="PATH",
                   help="white-matter mask on the inputs' grid (used with --acquired-range)")
    p.add_argument("--acquired-range", action="store_true",
                   help="map targets that were inputs back to their acquired intensity range [harmonized units]")
    p.add_argument("--amp", choices=["fp32", "bf16"], default="fp32",
                   help="autocast precision: bf16 is 1.7-1.8x faster at the paper preset on a CPU with bf16 "
                   "instructions and on GPUs; outputs differ from fp32 by bf16 rounding [fp32]")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network's cells (pays off on large volumes / GPUs; eager if it fails)")
    add_overwrite(p, "existing output files")
    p.set_defaults(func=run)


def synthesize_compiled(network, synthesize):
    """``synthesize()`` with the network's cells compiled; on a torch.compile failure, eagerly again."""
    from mmhvae import runtime

    try:
        runtime.compile_cells(network)
        return synthesize()
    except Exception as exc:  # noqa: BLE001 - only torch.compile's own failures are caught
        if not runtime.is_compile_failure(exc) and "torch.compile" not in str(exc):
            raise
        runtime.warn_compile_fallback(exc)
        runtime.uncompile(network)
        return synthesize()


def output_names(targets: list[str], samples: int) -> list[str]:
    """The files synthesize writes: ``<target>.nii.gz`` (+ ``<target>_std.nii.gz`` for K > 1)."""
    names = [f"{t}.nii.gz" for t in targets]
    return names + ([f"{t}_std.nii.gz" for t in targets] if samples > 1 else [])


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmhvae.data.nifti import write_volume
    from mmhvae.errors import UserError, check_device
    from mmhvae.infer import load_model, synthesize_volume
    from mmhvae.outputs import OutputFolder
    from mmhvae.runtime import ExecutionPlan

    names = [n for n, _ in args.input]
    if len(set(names)) != len(names):
        raise UserError(f"a modality is given twice in --input: {names}")
    inputs = [Path(p) for _, p in args.input] + [Path(p) for p in (args.mask, args.wm) if p]
    device = check_device(args.device)
    # Before any work: the output folder is writable and no output lands on an input.
    with OutputFolder(args.out, overwrite=args.overwrite, protect=inputs) as out:
        model = load_model(args.checkpoint, device)
        targets = list(args.targets) if args.targets else list(model.config.model.modalities)
        out.expect(output_names(targets, args.samples))
        tau = model.config.eval.temperature if args.temperature is None else args.temperature
        plan = ExecutionPlan(memory_format="channels_last", amp=args.amp)

        def synthesize():
            with plan.autocast(device):
                return synthesize_volume(
                    model, dict(args.input), targets=args.targets, temperature=tau, samples=args.samples,
                    batch_size=args.batch_size, seed=args.seed, progress=True,
                    brain_mask=args.mask, wm_mask=args.wm, acquired_range=args.acquired_range,
                )

        results = synthesize_compiled(model.network, synthesize) if args.compile else synthesize()
        for name, img in results.items():
            write_volume(out.staging / f"{name}.nii.gz", img.get_fdata(dtype="float32"), img.affine, img.header)
    for path in out.committed:
        print(f"wrote {path}")
    return 0
