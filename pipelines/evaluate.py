"""``pconv3d evaluate``: Dice and 95% Hausdorff distance per case and class, against reference labels.

Predictions ``<name>_seg<ext>`` (as ``pconv3d infer`` writes them) are matched to labels ``<name><ext>`` in a
folder, or to the ``label`` entries of a ``dataset.json`` section. Distances are in millimetres (the label's
voxel spacing). Scores come from :mod:`pipelines.evaluation`, with its rules: a class in the label and not in
the prediction of a case, or the other way round, is a failure (Dice 0, HD95 inf, and a mean over an inf is
inf); a class in neither is left out of the means, and the table says how many cases each mean covers. Label
voxels holding ``--ignore-index`` (unannotated, 255 as in ``configs/train.yaml``) are left out of every score
and are not a class. MONAI's reports (``metrics.csv``, ``dice_raw.csv``/``hd95_raw.csv`` per case,
``dice_summary.csv``/``hd95_summary.csv`` per class, ``notnans`` the cases) are written atomically, and the
mean per class is printed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from monai.transforms import LoadImage

from pconv3d.io.datalist import load_datalist, load_folder, read_volume_info
from pconv3d.io.save import output_path
from pconv3d.transforms.checks import grid_mismatch
from pipelines.config import config_path
from pipelines.errors import CLIError
from pipelines.evaluation import REPORT_FILES, score_case, stack_scores, summary, write_reports
from pipelines.inputs import check_label_values
from pipelines.outputs import check_writable, removed_if_failed


def _configured_ignore_index() -> int:
    """``configs/train.yaml``'s ``ignore_index`` (the one place it is set), read as plain YAML: every command
    builds this parser, so it must not parse the config and run its imports."""
    return int(yaml.safe_load(Path(config_path("train.yaml")).read_text())["ignore_index"])


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="Dice and HD95 of predictions against labels",
                       epilog="Per case and class, a class in the label and not in the prediction, or the other way "
                              "round, is a failure: Dice 0 and HD95 inf (a mean over a failed case is inf); a class "
                              "in neither is left out of the means. The table gives the cases each mean covers.")
    p.add_argument("--pred", help="folder of <name>_seg predictions")
    p.add_argument("--labels", help="folder of <name> label volumes, or a dataset.json")
    p.add_argument("--section", default="test", help="dataset.json section holding the labels (default: test)")
    p.add_argument("--output", help="folder for metrics.csv and summary.json (default: --pred)")
    p.add_argument("--classes", nargs="+", help="class names, background first (default: from dataset.json or numbers)")
    p.add_argument("--ignore-index", type=int, default=_configured_ignore_index(),
                   help="label value of unannotated voxels, left out of the scores and not a class "
                        "(default: %(default)s, the ignore_index of configs/train.yaml)")
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


def case_scores(pred_file: str, label_file: str, num_classes: int,
                ignore_index: int | None = None) -> dict[str, np.ndarray]:
    """Dice and HD95 (mm) per foreground class for one case (:func:`pipelines.evaluation.score_case`).

    The prediction must lie on its label's grid (shape and affine: a shifted or flipped prediction is refused,
    not scored) and both must hold class indices ``0 .. num_classes - 1`` (the label may hold ``ignore_index``
    too: those voxels are left out)."""
    pred_info, label_info = read_volume_info(pred_file), read_volume_info(label_file)
    problem = grid_mismatch(pred_info.shape[:3], pred_info.affine, label_info.shape[:3], label_info.affine)
    if problem:
        raise CLIError(f"{pred_file}: not on the grid of its label {label_file}: {problem}")
    load = LoadImage(image_only=True, ensure_channel_first=True)
    pred, label = load(pred_file), load(label_file)
    if pred.shape != label.shape:
        raise CLIError(f"{pred_file}: shape {tuple(pred.shape)} differs from its label {label_file} {tuple(label.shape)}")
    check_label_values(pred, pred_file, num_classes)
    check_label_values(label, label_file, num_classes, ignore_index)
    spacing = np.sqrt((np.asarray(label.affine)[:3, :3] ** 2).sum(0))
    return score_case(pred[0].as_tensor(), label[0].as_tensor(), num_classes, spacing=spacing,
                      ignore_index=ignore_index)


def evaluate(pairs: Sequence[tuple[str, str]], class_names: Sequence[str],
             ignore_index: int | None = None) -> tuple[list[str], dict[str, np.ndarray]]:
    """Case names and ``{metric: (cases, foreground classes)}`` scores of (prediction, label) file pairs."""
    per_case = [case_scores(p, l, len(class_names), ignore_index) for p, l in pairs]
    return [Path(label).name for _, label in pairs], stack_scores(per_case)


def class_names_for(labels: str, given: Sequence[str] | None, pairs: Sequence[tuple[str, str]],
                    ignore_index: int | None = None) -> list[str]:
    """Class names, background first.

    Args:
        labels: the labels folder or dataset.json.
        given: names given by the user, used as they are.
        pairs: (prediction, label) files; without names given or in the dataset.json, the classes are
            ``0 .. the largest value`` of these files, ``ignore_index`` (not a class) left out.
        ignore_index: the label value of unannotated voxels.
    """
    if given:
        return list(given)
    if Path(labels).is_file():
        names = json.loads(Path(labels).read_text()).get("labels")
        if isinstance(names, dict):
            return [names[k] for k in sorted(names, key=int)]
    values = torch.cat([torch.unique(LoadImage(image_only=True)(f).as_tensor()) for pair in pairs for f in pair])
    classes = values[values != ignore_index] if ignore_index is not None else values
    return [str(i) for i in range(int(classes.max()) + 1 if len(classes) else 1)]


def format_table(scores: dict[str, np.ndarray], class_names: Sequence[str]) -> str:
    """Markdown table per foreground class of the cases scored, the mean Dice ± sd and the mean HD95 with its
    failed cases (:func:`pipelines.evaluation.summary`), and a line that says which cases count.

    Args:
        scores: ``{"dice", "hd95"}``, each ``(cases, foreground classes)``.
        class_names: names of all classes, background first.

    Example:
        >>> scores = {"dice": np.array([[1.0], [0.0]]), "hd95": np.array([[0.0], [np.inf]])}  # 2 cases, 1 class
        >>> print(format_table(scores, ["bg", "organ"]))
        | class | cases | Dice (mean ± sd) | HD95 (mm) |
        |---|---|---|---|
        | organ | 2 | 0.500 ± 0.500 | inf (1 of 2 failed) |
        cases: those with the class in the label or the prediction; a class in one of them only is a failure (Dice 0, HD95 inf)
    """
    lines = ["| class | cases | Dice (mean ± sd) | HD95 (mm) |", "|---|---|---|---|"]
    for name, s in summary(scores, class_names[1:]).items():
        failed = f" ({s['hd95_failed']} of {s['hd95_n']} failed)" if s["hd95_failed"] else ""
        lines.append(f"| {name} | {s['dice_n']} | {s['dice']:.3f} ± {s['dice_sd']:.3f} | {s['hd95']:.2f}{failed} |")
    lines.append("cases: those with the class in the label or the prediction; a class in one of them only is a failure "
                 "(Dice 0, HD95 inf)")
    return "\n".join(lines)


def write_results(out_dir: Path, cases: list[str], class_names: Sequence[str], scores: dict[str, np.ndarray],
                  overwrite: bool) -> None:
    with removed_if_failed(out_dir):
        write_reports(out_dir, cases, class_names[1:], scores, overwrite=overwrite)


def run(args: argparse.Namespace) -> int:
    if not args.pred or not args.labels:
        raise CLIError("--pred and --labels are required")
    out = Path(args.output or args.pred)
    existing = [name for name in REPORT_FILES if (out / name).exists()]
    if existing and not args.overwrite:
        raise CLIError(f"{out / existing[0]} already exists from an earlier evaluation; pass --overwrite to replace it, "
                       "or choose another --output")
    check_writable(out)
    pairs = pair_cases(args.pred, args.labels, args.section)
    names = class_names_for(args.labels, args.classes, pairs, args.ignore_index)
    cases, scores = evaluate(pairs, names, args.ignore_index)
    write_results(out, cases, names, scores, args.overwrite)
    print(f"{len(pairs)} cases\n{format_table(scores, names)}\nper-case metrics: {out.resolve() / 'dice_raw.csv'}, "
          f"{out.resolve() / 'hd95_raw.csv'}")
    return 0
