"""``pconv3d evaluate``: Dice and 95% Hausdorff distance per case and class, against reference labels.

Predictions ``<name>_seg<ext>`` (as ``pconv3d infer`` writes them) are matched to labels ``<name><ext>`` in a
folder, or to the ``label`` entries of a ``dataset.json`` section. Distances are in millimetres (the label's
voxel spacing). Scores come from :mod:`pipelines.evaluation`; MONAI's reports (``metrics.csv``,
``dice_raw.csv``/``hd95_raw.csv`` per case, ``dice_summary.csv``/``hd95_summary.csv`` per class) are written
atomically, and the mean per class is printed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.transforms import LoadImage

from pconv3d.io.datalist import grid_mismatch, load_datalist, load_folder, read_volume_info
from pconv3d.io.save import output_path
from pipelines.arguments import positive_int
from pipelines.errors import CLIError
from pipelines.evaluation import REPORT_FILES, score_case, stack_scores, summary, write_reports
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


def case_scores(pred_file: str, label_file: str, num_classes: int) -> dict[str, np.ndarray]:
    """Dice and HD95 (mm) per foreground class for one case (:func:`pipelines.evaluation.score_case`).

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
    spacing = np.sqrt((np.asarray(label.affine)[:3, :3] ** 2).sum(0))
    return score_case(pred[0].as_tensor(), label[0].as_tensor(), num_classes, spacing=spacing)


def evaluate(pairs: Sequence[tuple[str, str]], class_names: Sequence[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Case names and ``{metric: (cases, foreground classes)}`` scores of (prediction, label) file pairs."""
    return [Path(label).name for _, label in pairs], stack_scores([case_scores(p, l, len(class_names)) for p, l in pairs])


def class_names_for(labels: str, given: Sequence[str] | None, pairs: Sequence[tuple[str, str]]) -> list[str]:
    if given:
        return list(given)
    if Path(labels).is_file():
        names = json.loads(Path(labels).read_text()).get("labels")
        if isinstance(names, dict):
            return [names[k] for k in sorted(names, key=int)]
    top = max(int(LoadImage(image_only=True)(f).max()) for pair in pairs for f in pair)
    return [str(i) for i in range(top + 1)]


def format_table(scores: dict[str, np.ndarray], class_names: Sequence[str]) -> str:
    """Markdown table of the mean Dice ± sd and mean HD95 per foreground class."""
    lines = ["| class | Dice (mean ± sd) | HD95 (mm) |", "|---|---|---|"]
    for name, s in summary(scores, class_names[1:]).items():
        lines.append(f"| {name} | {s['dice']:.3f} ± {s['dice_sd']:.3f} | {s['hd95']:.2f} |")
    return "\n".join(lines)


def write_results(out_dir: Path, cases: list[str], class_names: Sequence[str], scores: dict[str, np.ndarray],
                  overwrite: bool) -> None:
    with removed_if_failed(out_dir):
        write_reports(out_dir, cases, class_names[1:], scores, overwrite=overwrite)


def run(args: argparse.Namespace) -> int:
    if args.study:
        from pipelines.study import run_study  # heavy, and only for the study

        run_study(args.output or "outputs/study", epochs=args.epochs)
        return 0
    if not args.pred or not args.labels:
        raise CLIError("--pred and --labels are required (or --study)")
    out = Path(args.output or args.pred)
    existing = [name for name in REPORT_FILES if (out / name).exists()]
    if existing and not args.overwrite:
        raise CLIError(f"{out / existing[0]} already exists from an earlier evaluation; pass --overwrite to replace it, "
                       "or choose another --output")
    check_writable(out)
    pairs = pair_cases(args.pred, args.labels, args.section)
    names = class_names_for(args.labels, args.classes, pairs)
    cases, scores = evaluate(pairs, names)
    write_results(out, cases, names, scores, args.overwrite)
    print(f"{len(pairs)} cases\n{format_table(scores, names)}\nper-case metrics: {out.resolve() / 'dice_raw.csv'}, "
          f"{out.resolve() / 'hd95_raw.csv'}")
    return 0
