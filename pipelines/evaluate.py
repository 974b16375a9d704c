"""``pconv3d evaluate``: Dice and 95% Hausdorff distance per case and class, against reference labels.

Predictions ``<name>_seg<ext>`` (as ``pconv3d infer`` writes them) are matched to labels ``<name><ext>`` in a
folder, or to the ``label`` entries of a ``dataset.json`` section. Distances are in millimetres (the label's
voxel spacing). Writes ``metrics.csv`` (one row per case and class) and ``summary.json`` atomically, prints
the mean per class.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.transforms import LoadImage

from pconv3d.io.datalist import grid_mismatch, load_datalist, load_folder, read_volume_info
from pconv3d.io.sitk import atomic_write
from pconv3d.io.save import output_path
from pipelines.arguments import positive_int
from pipelines.errors import CLIError
from pipelines.inputs import check_label_values
from pipelines.outputs import check_writable, removed_if_failed


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="Dice and HD95 of predictions against labels")
    p.add_argument("--pred", help="folder of <name>_seg predictions")
    p.add_argument("--labels", help="folder of <name> label volumes, or a dataset.json")
    p.add_argument("--study", action="store_true",
                   help="run the missing-data robustness study instead (trains three models; see pipelines/study.py)")
    p.add_argument("--epochs", type=positive_int, default=250, help="with --study: training epochs per method")
    p.add_argument("--section", default="test", help="dataset.json section holding the labels (default: test)")
    p.add_argument("--output", help="folder for metrics.csv and summary.json (default: --pred)")
    p.add_argument("--classes", nargs="+", help="class names, background first (default: from dataset.json or numbers)")
    p.add_argument("--overwrite", action="store_true", help="replace existing metrics files")
    p.set_defaults(func=run)


def pair_cases(pred_dir: str, labels: str, section: str = "test") -> list[tuple[str, str]]:
    """(prediction, label) file pairs; an error naming every label without its prediction."""
    if Path(labels).is_file():
        label_files = [item["label"] for item in load_datalist(labels, section) if "label" in item]
    else:
        label_files = [item["image"] for item in load_folder(labels, mask_suffix="")]
    if not label_files:
        raise CLIError(f"{labels}: no labels found")
    pairs, missing = [], []
    for label in label_files:
        pred = output_path(label, pred_dir, "seg")
        (pairs.append((str(pred), label)) if pred.is_file() else missing.append(pred.name))
    if missing:
        raise CLIError(f"{pred_dir}: no prediction for {len(missing)} label(s): {', '.join(missing[:5])}")
    return pairs


def case_metrics(pred_file: str, label_file: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Dice and HD95 (mm) per foreground class for one case; NaN where a class is absent from both.

    The prediction must lie on its label's grid (shape and affine: a shifted or flipped prediction is refused,
    not scored) and both must hold class indices ``0 .. num_classes - 1``."""
    pred_info, label_info = read_volume_info(pred_file), read_volume_info(label_file)
    problem = grid_mismatch(pred_info.shape[:3], pred_info.affine, label_info.shape[:3], label_info.affine)
    if problem:
        raise CLIError(f"{pred_file}: not on the grid of its label {label_file}: {problem}")
    load = LoadImage(image_only=True, ensure_channel_first=True)
    pred, label = load(pred_file), load(label_file)
    if pred.shape != label.shape:
        raise CLIError(f"{pred_file}: shape {tuple(pred.shape)} differs from its label {label_file} {tuple(label.shape)}")
    for volume, path in ((pred, pred_file), (label, label_file)):
        check_label_values(volume, path, num_classes)
    spacing = [float(s) for s in np.sqrt((np.asarray(label.affine)[:3, :3] ** 2).sum(0))]
    onehot = [torch.nn.functional.one_hot(t[0].long(), num_classes).movedim(-1, 0)[None] for t in (pred, label)]
    dice = compute_dice(*onehot, include_background=False, ignore_empty=True)[0]
    hd95 = compute_hausdorff_distance(*onehot, include_background=False, percentile=95, spacing=spacing)[0]
    return dice.numpy(), hd95.numpy()


def evaluate(pairs: Sequence[tuple[str, str]], class_names: Sequence[str]) -> tuple[list[dict], dict]:
    rows = []
    for pred, label in pairs:
        dice, hd95 = case_metrics(pred, label, len(class_names))
        for c, name in enumerate(class_names[1:]):
            rows.append({"case": Path(label).name, "class": name, "dice": float(dice[c]), "hd95_mm": float(hd95[c])})
    summary = {}
    for name in class_names[1:]:
        d = np.array([r["dice"] for r in rows if r["class"] == name])
        h = np.array([r["hd95_mm"] for r in rows if r["class"] == name])
        summary[name] = {"dice": float(np.nanmean(d)), "dice_std": float(np.nanstd(d)),
                         "hd95_mm": float(np.nanmean(h[np.isfinite(h)])) if np.isfinite(h).any() else float("nan")}
    return rows, summary


def class_names_for(labels: str, given: Sequence[str] | None, pairs: Sequence[tuple[str, str]]) -> list[str]:
    if given:
        return list(given)
    if Path(labels).is_file():
        names = json.loads(Path(labels).read_text()).get("labels")
        if isinstance(names, dict):
            return [names[k] for k in sorted(names, key=int)]
    top = max(int(LoadImage(image_only=True)(f).max()) for pair in pairs for f in pair)
    return [str(i) for i in range(top + 1)]


def format_table(summary: dict) -> str:
    lines = ["| class | Dice (mean ± sd) | HD95 (mm) |", "|---|---|---|"]
    lines += [f"| {n} | {s['dice']:.3f} ± {s['dice_std']:.3f} | {s['hd95_mm']:.2f} |" for n, s in summary.items()]
    return "\n".join(lines)


RESULT_FILES = ("metrics.csv", "summary.json")


def write_results(out_dir: Path, rows: list[dict], summary: dict, overwrite: bool) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, ["case", "class", "dice", "hd95_mm"])
    writer.writeheader()
    writer.writerows(rows)
    with removed_if_failed(out_dir):
        atomic_write(out_dir / RESULT_FILES[0], lambda p: p.write_text(text.getvalue()), overwrite=overwrite)
        atomic_write(out_dir / RESULT_FILES[1], lambda p: p.write_text(json.dumps(summary, indent=1)), overwrite=overwrite)


def run(args: argparse.Namespace) -> int:
    if args.study:
        from pipelines.study import run_study  # heavy, and only for the study

        run_study(args.output or "outputs/study", epochs=args.epochs)
        return 0
    if not args.pred or not args.labels:
        raise CLIError("--pred and --labels are required (or --study)")
    out = Path(args.output or args.pred)
    existing = [name for name in RESULT_FILES if (out / name).exists()]
    if existing and not args.overwrite:
        raise CLIError(f"{out / existing[0]} already exists from an earlier evaluation; pass --overwrite to replace it, "
                       "or choose another --output")
    check_writable(out)
    pairs = pair_cases(args.pred, args.labels, args.section)
    names = class_names_for(args.labels, args.classes, pairs)
    rows, summary = evaluate(pairs, names)
    write_results(out, rows, summary, args.overwrite)
    print(f"{len(pairs)} cases\n{format_table(summary)}\nper-case metrics: {out.resolve() / 'metrics.csv'}")
    return 0
