"""Scoring segmentations: the one routine behind ``pconv3d evaluate``, ``pconv3d run`` and the study, and its
reports.

Per case and foreground class: Dice and the 95th-percentile Hausdorff distance in millimetres (MONAI's
``compute_dice`` and ``compute_hausdorff_distance``), and optionally Dice inside a region (the voxels that
were missing). The empty cases are decided here, as the Medical Segmentation Decathlon's and nnU-Net's
evaluations do: a class in the label and not in the prediction, or the other way round, is a failure, Dice 0
and HD95 +inf; a class in neither is NaN, left out of the means (:func:`summary` counts the cases each mean
covers and the failed distances, and a mean over a failed distance is +inf). Unannotated voxels (the label's
``ignore_index``) are left out of every score: neither map counts them as any class. Reports are MONAI's
``write_metrics_reports`` (``metrics.csv`` with the overall means, ``<metric>_raw.csv`` per case,
``<metric>_summary.csv`` per class, whose ``notnans`` is the number of cases), all written at once and
atomically, never over earlier reports unless asked.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.handlers.utils import write_metrics_reports
from monai.metrics import compute_dice, compute_hausdorff_distance

from pconv3d.io.sitk import atomic_write
from pconv3d.transforms.labels import OneHotAnnotated

SUMMARY_OPS = ("mean", "std", "median", "min", "max", "notnans")
REPORT_FILES = ("metrics.csv", "dice_raw.csv", "dice_summary.csv", "hd95_raw.csv", "hd95_summary.csv")


def _per_class(metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], p: torch.Tensor, t: torch.Tensor,
               failed: float) -> np.ndarray:
    """``metric`` of one-hot maps ``(1, C, ...)`` per foreground class where the class is in both; ``failed``
    where it is in one of them only, NaN where it is in neither."""
    in_p, in_t = (x[0, 1:].flatten(1).any(1).cpu().numpy() for x in (p, t))
    out = np.where(in_p | in_t, failed, np.nan).astype(np.float32)
    both = np.flatnonzero(in_p & in_t)
    if len(both):
        channels = torch.as_tensor(both + 1, device=p.device)
        out[both] = metric(p[:, channels], t[:, channels])[0].cpu().numpy()
    return out


def score_case(
    pred: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    region: torch.Tensor | None = None,
    ignore_index: int | None = None,
) -> dict[str, np.ndarray]:
    """Scores of one case, each an array with one value per foreground class (the rules of the module doc).

    Args:
        pred: predicted class indices, spatial shape (no channel axis).
        label: reference class indices, same shape.
        num_classes: classes, background (0) included.
        spacing: voxel size in mm; with it, ``hd95`` is computed too.
        region: a boolean map of the same shape; with it, ``dice_region`` is Dice over those voxels alone.
        ignore_index: the label value of unannotated voxels, left out of every score (``None``: none).

    Returns:
        ``{"dice": ..., "hd95": ..., "dice_region": ...}`` (the last two when asked for).

    Example:
        >>> lab = torch.zeros(8, 8, 8, dtype=torch.long); lab[2:6, 2:6, 2:6] = 1
        >>> score_case(lab, lab, 3)["dice"]  # class 2 is in neither map
        array([ 1., nan], dtype=float32)
        >>> score_case(torch.zeros_like(lab), lab, 2, spacing=(1, 1, 1))  # class 1 missed
        {'dice': array([0.], dtype=float32), 'hd95': array([inf], dtype=float32)}
    """
    t = OneHotAnnotated(num_classes, ignore_index)(label[None])[None]
    p = OneHotAnnotated(num_classes)(pred[None])[None] * t.any(1, keepdim=True)
    dice = functools.partial(compute_dice, include_background=True)
    scores = {"dice": _per_class(dice, p, t, 0.0)}
    if spacing is not None:
        hd95 = functools.partial(compute_hausdorff_distance, include_background=True, percentile=95,
                                 spacing=list(spacing))
        scores["hd95"] = _per_class(hd95, p, t, float("inf"))
    if region is not None:
        inside = region.to(p.device, torch.bool)[None, None]
        scores["dice_region"] = _per_class(dice, p * inside, t * inside, 0.0)
    return scores


def stack_scores(per_case: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{metric: (cases, classes) array}`` from a list of :func:`score_case` results."""
    return {k: np.stack([np.asarray(s[k], dtype=np.float64) for s in per_case]) for k in per_case[0]}


def summary(scores: dict[str, np.ndarray], class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per foreground class, each metric over the cases where the class is in the label or the prediction (NaN,
    a class in neither, left out): ``metric`` the mean, ``metric_sd`` the sd, ``metric_n`` the cases and
    ``metric_failed`` those that are +inf (a failed distance). A mean over a failed distance is +inf and its sd
    NaN; with no case, mean and sd are NaN.

    Args:
        scores: ``{metric: (cases, foreground classes)}``, as :func:`stack_scores` makes them.
        class_names: the foreground classes' names.

    Example:
        >>> scores = {"dice": np.array([[1.0], [0.0], [np.nan]]), "hd95": np.array([[0.0], [np.inf], [np.nan]])}
        >>> s = summary(scores, ["organ"])["organ"]  # a perfect case, a failed one, one without the class
        >>> s["dice"], s["dice_sd"], s["dice_n"], s["hd95"], s["hd95_failed"]
        (0.5, 0.5, 2, inf, 1)
    """
    out: dict[str, dict[str, float]] = {}
    for c, name in enumerate(class_names):
        out[name] = {}
        for metric, values in scores.items():
            v = values[:, c][~np.isnan(values[:, c])]
            out[name][metric] = float(v.mean()) if len(v) else float("nan")
            out[name][f"{metric}_sd"] = float(v.std()) if len(v) and np.isfinite(v).all() else float("nan")
            out[name][f"{metric}_n"] = len(v)
            out[name][f"{metric}_failed"] = int(np.isposinf(v).sum())
    return out


def write_reports(out_dir: str | os.PathLike, cases: Sequence[str], class_names: Sequence[str],
                  scores: dict[str, np.ndarray], overwrite: bool = False) -> Path:
    """Write MONAI's metric reports for ``scores`` (``{metric: (cases, classes)}``) into ``out_dir`` at once.

    Raises ``FileExistsError`` naming a report that exists already, unless ``overwrite``."""
    out = Path(out_dir)
    overall = {f"mean_{k}": float(np.nanmean(v)) for k, v in scores.items()}
    with np.errstate(invalid="ignore"):  # the sd over a failed distance (inf) is NaN, as in summary()
        return atomic_write(out / REPORT_FILES[0], lambda tmp: write_metrics_reports(
            tmp.parent, images=list(cases), metrics=overall, metric_details=scores, summary_ops=list(SUMMARY_OPS),
            class_labels=list(class_names)), overwrite=overwrite)
