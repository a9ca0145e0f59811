"""``mmhvae uhved``: train, apply and evaluate U-HVED / U-HeMIS (DESIGN §4, seed ``uhved_miccai2019``).

    mmhvae uhved train    --cohort COHORT --out RUN [--config uhved-cpu|uhved-tiny|uhved-paper|file.yaml] [key=value ...]
    mmhvae uhved predict  --checkpoint RUN --input t2=t2.nii.gz --input flair=flair.nii.gz --out DIR
    mmhvae uhved evaluate --checkpoint RUN --cohort COHORT --split test --out DIR

``train`` is ``mmhvae train --method uhved`` (one code path: :func:`mmhvae.commands.train.run_uhved`;
``model.method`` comes from the config, ``uhved`` unless overridden).
``predict`` writes ``seg.nii.gz`` (label values of ``model.seg_labels``) and, for U-HVED, one
``<modality>.nii.gz`` per model modality (observed ones reconstructed, missing ones synthesized, in
harmonized intensity units; ``harmonization.json`` holds the per-input parameters), all with the
geometry (shape, affine, header) of the inputs.
``evaluate`` writes the seed's Table 1 (Dice % per tumour region for every input subset) and the
completion PSNR / SSIM per subset and target modality, as CSV and Markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

SPLITS = ("train", "val", "test", "all")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from mmhvae.commands.arguments import add_verb_group

    actions = add_verb_group(
        subparsers, "uhved", __doc__,
        help="U-HVED: 3D tumour segmentation and modality completion from any subset (MICCAI 2019)",
    )
    train = actions.add_parser("train", help="train on a cohort (random 3D patches); = mmhvae train --method uhved")
    train.add_argument("--cohort", required=True, help="cohort manifest CSV or folder")
    train.add_argument("--out", required=True, help="run folder (config.yaml, checkpoints/, metrics.csv)")
    train.add_argument("--config", default=None,
                       help="preset (uhved-tiny, uhved-cpu, uhved-paper) or YAML file; default: uhved-cpu")
    train.add_argument("--split", default="train", choices=SPLITS, help="cohort split (default: train)")
    train.add_argument("--resume", action="store_true",
                       help="continue from the checkpoint in --out (different settings are refused)")
    train.add_argument("--strict", action="store_true",
                       help="refuse a folder cohort with files that match no modality or empty subject folders")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument(
        "overrides", nargs="*", metavar="key=value", help="e.g. train.steps=500 model.method=uhemis"
    )
    train.set_defaults(func=run_train, method=None)

    predict = actions.add_parser("predict", help="segment and complete one subject (sliding window)")
    add_predict_arguments(predict)
    predict.set_defaults(func=run_predict)

    evaluate = actions.add_parser(
        "evaluate", help="Dice per input subset (seed Table 1) + completion PSNR/SSIM"
    )
    evaluate.add_argument("--checkpoint", required=True, help="run folder or its .safetensors checkpoint")
    evaluate.add_argument("--cohort", required=True, help="cohort manifest CSV or folder")
    evaluate.add_argument("--split", default="test", choices=SPLITS, help="cohort split (default: test)")
    evaluate.add_argument("--out", required=True, help="output folder for the tables")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing report in --out")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help="eval.* overrides")
    evaluate.set_defaults(func=run_evaluate)


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``uhved predict`` and ``segment``: checkpoint, inputs, output folder, device."""
    parser.add_argument("--checkpoint", required=True, help="U-HVED run folder or its .safetensors checkpoint")
    parser.add_argument(
        "--input", action="append", required=True, metavar="MODALITY=PATH",
        help="an observed modality, repeatable: --input t2=t2.nii.gz --input flair=flair.nii.gz",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--brain-mask", default=None, help="optional brain mask NIfTI for harmonization")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="eval.* overrides, e.g. eval.window=[96,96,96]"
    )


def run_train(args: argparse.Namespace) -> int:
    """``mmhvae uhved train``: the U-HVED side of ``mmhvae train`` (``model.method`` from the config)."""
    from mmhvae.commands.train import run_uhved

    return run_uhved(args)


# --------------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------------


def parse_inputs(items: Sequence[str], modalities: Sequence[str]) -> dict[str, Path]:
    """``["t2=a.nii.gz", ...]`` -> ``{"t2": Path("a.nii.gz")}``, refusing unknown or repeated names."""
    from mmhvae.errors import UserError

    inputs: dict[str, Path] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--input {item!r}: expected MODALITY=PATH, e.g. t2=t2.nii.gz")
        name, path = (s.strip() for s in item.split("=", 1))
        if name not in modalities:
            raise UserError(
                f"--input {item!r}: unknown modality {name!r}; this model knows {list(modalities)}"
            )
        if name in inputs:
            raise UserError(f"--input: modality {name!r} given twice")
        inputs[name] = Path(path)
    if not inputs:
        raise UserError(f"empty input subset: give at least one --input among {list(modalities)}")
    return inputs


def _eval_overrides(cfg, overrides: Sequence[str]):
    from mmhvae.errors import UserError

    bad = [o for o in overrides if not o.split("=", 1)[0].strip().startswith("eval.")]
    if bad:
        raise UserError(f"only eval.* settings can be overridden at inference, got {bad}")
    return cfg.with_overrides(list(overrides))


def run_predict(args: argparse.Namespace) -> int:
    from mmhvae.errors import check_device
    from mmhvae.outputs import OutputFolder
    from mmhvae.checkpoint import load_uhved

    device = check_device(args.device)
    given = [Path(item.split("=", 1)[1].strip()) for item in args.input if "=" in item]
    given += [Path(args.brain_mask)] if args.brain_mask else []
    # Before any work: the output folder is writable and no output lands on an input (all or nothing).
    out = OutputFolder(args.out, overwrite=getattr(args, "overwrite", False), protect=given)
    out.open()
    try:
        model, cfg, _ = load_uhved(args.checkpoint, device=device)
        cfg = _eval_overrides(cfg, args.overrides)
        names = ["seg.nii.gz", "harmonization.json"]
        names += [f"{m}.nii.gz" for m in cfg.model.modalities] if cfg.model.method == "uhved" else []
        out.expect(names)
        _predict(args, model, cfg, out.staging)
        out.commit()
    finally:
        out.discard()
    print(f"wrote {out.target} (inputs {'+'.join(parse_inputs(args.input, cfg.model.modalities))}; device {device})")
    return 0


def _read_inputs(args: argparse.Namespace, cfg):
    """The ``--input`` volumes (one grid: shapes equal, affines within ``data.affine_tolerance``) and
    the optional brain mask -> a :class:`~mmhvae.data.cohort.SubjectVolumes` and the reference image."""
    import nibabel as nib
    import numpy as np

    from mmhvae.data.cohort import SubjectVolumes
    from mmhvae.errors import InputDataError

    ref = None
    volumes: dict[str, np.ndarray] = {}
    for name, path in parse_inputs(args.input, cfg.model.modalities).items():
        if not path.exists():
            raise InputDataError(f"--input {name}={path}: file not found")
        img = nib.load(str(path))
        if len(img.shape) != 3:
            raise InputDataError(f"--input {name}={path}: expected a 3D volume, got shape {img.shape}")
        if ref is None:
            ref = img
        elif img.shape != ref.shape or np.abs(img.affine - ref.affine).max() > cfg.data.affine_tolerance:
            raise InputDataError(
                f"--input {name}={path}: shape {img.shape} / affine differ from the first input "
                f"{ref.shape} (data.affine_tolerance={cfg.data.affine_tolerance}); resample all inputs to one grid first"
            )
        volumes[name] = np.asarray(img.dataobj, dtype=np.float32)
    brain = None
    if args.brain_mask:
        brain = np.asarray(nib.load(args.brain_mask).dataobj) > 0
        if brain.shape != ref.shape:
            raise InputDataError(f"--brain-mask: shape {brain.shape} differs from the inputs {ref.shape}")
    subject = SubjectVolumes(name="input", images=volumes, affine=ref.affine, header=ref.header, brain_mask=brain)
    return subject, ref


def _predict(args: argparse.Namespace, model, cfg, out: Path) -> None:
    """Segment and complete the inputs into the (staging) folder ``out``."""
    import json

    import numpy as np
    import torch

    from mmhvae.atomic import atomic_write_text
    from mmhvae.data.harmonize import harmonize_subject
    from mmhvae.models.uhved import sliding_window_predict

    mods = cfg.model.modalities
    subject, ref = _read_inputs(args, cfg)
    # One subject's harmonization, so FLAIR can borrow the white matter found on T2 (DESIGN §3).
    harmonized, params = harmonize_subject(subject, cfg.data)
    del subject
    images = np.zeros((1, len(mods), *ref.shape), dtype=np.float32)
    observed = np.zeros((1, len(mods)), dtype=bool)
    for j, m in enumerate(mods):
        if m in harmonized:
            images[0, j] = harmonized.pop(m)
            observed[0, j] = True
    probs, decoded = sliding_window_predict(
        model, torch.from_numpy(images), torch.from_numpy(observed), cfg.eval, output_device="cpu"
    )
    del images
    labels = np.asarray(cfg.model.seg_labels, dtype=np.uint8)
    write_like(ref, labels[probs[0].argmax(0).numpy()], out / "seg.nii.gz")
    del probs
    if decoded is not None:
        for j, m in enumerate(mods):
            write_like(ref, decoded[0, j].numpy().astype(np.float32), out / f"{m}.nii.gz")
    # Outputs are in harmonized units; these parameters map an observed modality back to scanner units.
    inputs = {m: str(v) for m, v in parse_inputs(args.input, mods).items()}
    atomic_write_text(
        out / "harmonization.json",
        json.dumps({m: p.to_dict() for m, p in params.items()} | {"inputs": inputs}, indent=1),
    )


def write_like(ref: Any, data: Any, path: Path) -> None:
    """Save ``data`` as NIfTI with the affine and header of ``ref`` (data type from ``data``), atomically."""
    import gzip

    import nibabel as nib

    from mmhvae.atomic import atomic_write

    header = ref.header.copy()
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(1.0, 0.0)
    image = nib.Nifti1Image(data, ref.affine, header)
    # nibabel picks the format from the file name and the temporary name ends in .tmp, so
    # serialize in memory and gzip explicitly.
    atomic_write(path, lambda tmp: tmp.write_bytes(gzip.compress(image.to_bytes(), compresslevel=1)))


# --------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------


def run_evaluate(args: argparse.Namespace) -> int:
    import json
    import time

    from mmhvae.atomic import atomic_write_text
    from mmhvae.errors import check_device
    from mmhvae.outputs import OutputFolder
    from mmhvae.checkpoint import load_uhved
    from mmhvae.train.uhved import evaluate_cases, load_cases

    device = check_device(args.device)
    # All or nothing: the tables are written beside --out and moved in together.
    with OutputFolder(args.out, overwrite=getattr(args, "overwrite", False)) as folder:
        folder.expect(["per_subject.csv", "dice_table.md", "dice_table.csv", "summary.json"])
        out = folder.staging
        model, cfg, step = load_uhved(args.checkpoint, device=device)
        cfg = _eval_overrides(cfg, args.overrides)
        cases = load_cases(args.cohort, args.split, cfg)
        t0 = time.time()
        rows = evaluate_cases(model, cfg, cases)
        atomic_write_text(out / "per_subject.csv", rows_to_csv(rows))
        dice_md, dice_csv = dice_table(rows, cfg)
        atomic_write_text(out / "dice_table.md", dice_md)
        atomic_write_text(out / "dice_table.csv", dice_csv)
        text = dice_md
        if cfg.model.method == "uhved":
            comp_md, comp_csv = completion_table(rows, cfg)
            atomic_write_text(out / "completion_table.md", comp_md)
            atomic_write_text(out / "completion_table.csv", comp_csv)
            text += "\n" + comp_md
        atomic_write_text(
            out / "summary.json",
            json.dumps(
                {"checkpoint": str(args.checkpoint), "step": step, "subjects": len(cases), "split": args.split,
                 "method": cfg.model.method, "seconds": round(time.time() - t0, 1)},
                indent=1,
            ),
        )
    print(text)
    return 0


def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Dict rows -> CSV text; the columns are the union of the rows' keys, in first-seen order."""
    import csv
    import io

    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    import numpy as np

    arr = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std())


def _markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def dice_table(rows: Sequence[dict[str, Any]], cfg) -> tuple[str, str]:
    """Seed Table 1: one row per input subset (● present, ○ missing), Dice % per region, Means row.

    Returns (Markdown, CSV); cells are mean (std) over the labelled subjects."""
    from mmhvae.subsets import all_subsets, subset_name

    mods = cfg.model.modalities
    regions = list(cfg.eval.regions)
    body, table = [], []
    for subset in all_subsets(len(mods)):
        name = subset_name(subset, mods)
        sel = [r for r in rows if r["subset"] == name and f"dice_{regions[0]}" in r]
        if not sel:
            continue
        stats = {reg: _mean_std([100.0 * r[f"dice_{reg}"] for r in sel]) for reg in regions}
        marks = ["●" if b else "○" for b in subset]
        body.append([*marks, *(f"{m:.1f} ({s:.1f})" for m, s in stats.values()), str(len(sel))])
        entry: dict[str, Any] = {"subset": name, **{m: int(b) for m, b in zip(mods, subset)}}
        for reg, (m, s) in stats.items():
            entry[f"dice_{reg}_mean"], entry[f"dice_{reg}_std"] = round(m, 3), round(s, 3)
        table.append({**entry, "n": len(sel)})
    if not body:
        return "No labelled subject: no Dice table.\n", ""
    means = [_mean_std([t[f"dice_{r}_mean"] for t in table])[0] for r in regions]
    body.append(["Means", *[""] * (len(mods) - 1), *(f"{m:.1f}" for m in means), ""])
    header = [*mods, *(f"{r} Dice %" for r in regions), "n"]
    title = f"Dice % (mean (std) over subjects), {cfg.model.method}\n\n"
    return title + _markdown(header, body), rows_to_csv(table)


def completion_table(rows: Sequence[dict[str, Any]], cfg) -> tuple[str, str]:
    """Completion of the modalities *missing* from each input subset: PSNR dB and 3D SSIM.

    Returns (Markdown, CSV); cells are mean (std) over subjects, "—" for modalities in the input."""
    from mmhvae.subsets import all_subsets, subset_name

    mods = cfg.model.modalities
    body, table = [], []
    for subset in all_subsets(len(mods)):
        name = subset_name(subset, mods)
        sel = [r for r in rows if r["subset"] == name]
        if not sel:
            continue
        psnr_cells, ssim_cells = [], []
        for j, m in enumerate(mods):
            vals = [r for r in sel if f"psnr_{m}" in r and not r[f"in_input_{m}"]]
            if subset[j] or not vals:
                psnr_cells.append("—")
                ssim_cells.append("—")
                continue
            p, ps = _mean_std([r[f"psnr_{m}"] for r in vals])
            s, ss = _mean_std([r[f"ssim_{m}"] for r in vals])
            psnr_cells.append(f"{p:.2f} ({ps:.2f})")
            ssim_cells.append(f"{s:.3f} ({ss:.3f})")
            table.append({"subset": name, "target": m, "psnr_mean": round(p, 4), "psnr_std": round(ps, 4),
                          "ssim_mean": round(s, 5), "ssim_std": round(ss, 5), "n": len(vals)})
        body.append([name, *psnr_cells, *ssim_cells])
    header = ["input", *(f"{m} PSNR" for m in mods), *(f"{m} SSIM" for m in mods)]
    title = "Completion of missing modalities: PSNR dB (brain mask) and 3D SSIM, mean (std)\n\n"
    return title + _markdown(header, body), rows_to_csv(table)
