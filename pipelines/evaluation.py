"""Scoring segmentations: the one routine behind ``pconv3d evaluate``, ``pconv3d run`` and the study, and its
reports.

Per case and foreground class: Dice and the 95th-percentile Hausdorff distance in millimetres (MONAI's
``compute_dice`` and ``compute_hausdorff_distance``), and optionally Dice inside a region (the voxels that
were missing), NaN where a class is absent from both maps. Reports are MONAI's ``write_metrics_reports``
(``metrics.csv`` with the overall means, ``<metric>_raw.csv`` per case, ``<metric>_summary.csv`` per class),
all written at once and atomically, never over earlier reports unless asked.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.handlers.utils import write_metrics_reports
from monai.metrics import compute_dice, compute_hausdorff_distance

from pconv3d.io.sitk import atomic_write

SUMMARY_OPS = ("mean", "std", "median", "min", "max", "notnans")
REPORT_FILES = ("metrics.csv", "dice_raw.csv", "dice_summary.csv", "hd95_raw.csv", "hd95_summary.csv")


def _onehot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels.long(), num_classes).movedim(-1, 0)[None]


def score_case(
    pred: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    region: torch.Tensor | None = None,
) -> dict[str, np.ndarray]:
    """Scores of one case, each an array with one value per foreground class.

    Args:
        pred: predicted class indices, spatial shape (no channel axis).
        label: reference class indices, same shape.
        num_classes: classes, background (0) included.
        spacing: voxel size in mm; with it, ``hd95`` is computed too.
        region: a boolean map of the same shape; with it, ``dice_region`` is Dice over those voxels alone.

    Returns:
        ``{"dice": ..., "hd95": ..., "dice_region": ...}`` (the last two when asked for).

    Example:
        >>> lab = torch.zeros(8, 8, 8, dtype=torch.long); lab[2:6, 2:6, 2:6] = 1
        >>> score_case(lab, lab, 2)["dice"]
        array([1.], dtype=float32)
    """
    p, t = _onehot(pred, num_classes), _onehot(label, num_classes)
    scores = {"dice": compute_dice(p, t, include_background=False, ignore_empty=True)[0].numpy()}
    if spacing is not None:
        scores["hd95"] = compute_hausdorff_distance(p, t, include_background=False, percentile=95,
                                                    spacing=list(spacing))[0].numpy()
    if region is not None:
        inside = region.to(p.device, torch.bool)[None, None]
        scores["dice_region"] = compute_dice(p * inside, t * inside, include_background=False, ignore_empty=True)[0].numpy()
    return scores


def stack_scores(per_case: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{metric: (cases, classes) array}`` from a list of :func:`score_case` results."""
    return {k: np.stack([np.asarray(s[k], dtype=np.float64) for s in per_case]) for k in per_case[0]}


def summary(scores: dict[str, np.ndarray], class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per foreground class: mean and sd over cases of each metric (NaNs, absent classes, left out)."""
    out: dict[str, dict[str, float]] = {}
    for c, name in enumerate(class_names):
        out[name] = {}
        for metric, values in scores.items():
            finite = values[:, c][np.isfinite(values[:, c])]
            out[name][metric] = float(finite.mean()) if len(finite) else float("nan")
            out[name][f"{metric}_sd"] = float(finite.std()) if len(finite) else float("nan")
    return out


def write_reports(out_dir: str | os.PathLike, cases: Sequence[str], class_names: Sequence[str],
                  scores: dict[str, np.ndarray], overwrite: bool = False) -> Path:
    """Write MONAI's metric reports for ``scores`` (``{metric: (cases, classes)}``) into ``out_dir`` at once.

    Raises ``FileExistsError`` naming a report that exists already, unless ``overwrite``."""
    out = Path(out_dir)
    overall = {f"mean_{k}": float(np.nanmean(v)) for k, v in scores.items()}
    return atomic_write(out / REPORT_FILES[0], lambda tmp: write_metrics_reports(
        tmp.parent, images=list(cases), metrics=overall, metric_details=scores, summary_ops=list(SUMMARY_OPS),
        class_labels=list(class_names)), overwrite=overwrite)
