"""Scoring (pipelines.evaluation) and ``pconv3d evaluate`` on hand-made volumes: a failure is scored as a failure,
a class in neither map is left out, and unannotated voxels (the ignore value) are not scored and not a class."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipelines.cli import main
from pipelines.evaluation import score_case, stack_scores, summary
from tests.cli_helpers import cli


def _slab(start: int, stop: int) -> torch.Tensor:
    """An 8^3 map of class indices: 1 where ``start <= x < stop`` (64 voxels per x), 0 elsewhere."""
    out = torch.zeros(8, 8, 8, dtype=torch.long)
    out[start:stop] = 1
    return out


def test_a_class_in_one_map_only_fails_and_a_class_in_neither_is_left_out():
    empty = torch.zeros(8, 8, 8, dtype=torch.long)
    missed = score_case(empty, _slab(0, 4), 2, spacing=(1, 1, 1))
    assert missed["dice"].tolist() == [0.0] and missed["hd95"].tolist() == [math.inf]
    invented = score_case(_slab(0, 4), empty, 2, spacing=(1, 1, 1))
    assert invented["dice"].tolist() == [0.0] and invented["hd95"].tolist() == [math.inf]
    neither = score_case(_slab(0, 4), _slab(0, 4), 3, spacing=(1, 1, 1))  # class 2 is in neither map
    assert neither["dice"][0] == 1.0 and neither["hd95"][0] == 0.0
    assert np.isnan(neither["dice"][1]) and np.isnan(neither["hd95"][1])
    # both present: MONAI's Dice, 2 * 128 / (256 + 128)
    assert score_case(_slab(0, 2), _slab(0, 4), 2)["dice"][0] == pytest.approx(2 / 3)


def test_dice_in_a_region_follows_the_same_rules():
    region = _slab(4, 8).bool()
    label = _slab(0, 4)  # class 1 never inside the region
    assert np.isnan(score_case(label, label, 2, region=region)["dice_region"][0])
    assert score_case(_slab(0, 6), label, 2, region=region)["dice_region"].tolist() == [0.0]  # only predicted there
    assert score_case(torch.zeros_like(label), _slab(4, 6), 2, region=region)["dice_region"].tolist() == [0.0]
    # inside x in [4, 8): label 1 at x 4-5 (128 voxels), prediction at x 4 (64): 2 * 64 / 192
    assert score_case(_slab(0, 5), _slab(0, 6), 2, region=region)["dice_region"][0] == pytest.approx(2 / 3)


def test_unannotated_voxels_are_not_scored():
    label = _slab(0, 4)
    label[7] = 255  # unannotated: x == 7
    pred = _slab(0, 4)
    pred[7] = 2  # a class predicted only where nothing is annotated: in neither map
    scores = score_case(pred, label, 3, spacing=(1, 1, 1), ignore_index=255)
    assert scores["dice"][0] == 1.0 and scores["hd95"][0] == 0.0
    assert np.isnan(scores["dice"][1]) and np.isnan(scores["hd95"][1])
    pred[6, 0, 0] = 1  # one annotated false positive: 2 * 256 / (257 + 256)
    assert score_case(pred, label, 3, ignore_index=255)["dice"][0] == pytest.approx(512 / 513)


def test_summary_counts_the_cases_and_keeps_failures():
    perfect = score_case(_slab(0, 4), _slab(0, 4), 3, spacing=(1, 1, 1))  # class 2 in neither
    failed = score_case(torch.zeros(8, 8, 8, dtype=torch.long), _slab(0, 4), 3, spacing=(1, 1, 1))
    s = summary(stack_scores([perfect, failed]), ["one", "two"])
    assert (s["one"]["dice"], s["one"]["dice_sd"], s["one"]["dice_n"], s["one"]["dice_failed"]) == (0.5, 0.5, 2, 0)
    assert (s["one"]["hd95"], s["one"]["hd95_n"], s["one"]["hd95_failed"]) == (math.inf, 2, 1)
    assert np.isnan(s["one"]["hd95_sd"])
    assert s["two"]["dice_n"] == 0 and np.isnan(s["two"]["dice"]) and np.isnan(s["two"]["dice_sd"])


def _write(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.uint8), np.diag([2.0, 1, 1, 1])), path)
    return path


def _csv(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()]


def test_evaluate_reports_a_failed_case_and_the_cases_counted(tmp_path, capsys):
    label = _slab(0, 4).numpy()
    for name, pred in (("a", label), ("b", np.zeros_like(label))):  # b misses class 1
        _write(tmp_path / "labels" / f"{name}.nii.gz", label)
        _write(tmp_path / "pred" / f"{name}_seg.nii.gz", pred)
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--labels", str(tmp_path / "labels")]) == 0
    assert "| 1 | 2 | 0.500 ± 0.500 | inf (1 of 2 failed) |" in capsys.readouterr().out
    dice, hd95 = (_csv(tmp_path / "pred" / f"{m}_summary.csv") for m in ("dice", "hd95"))
    assert float(dice[1][dice[0].index("mean")]) == 0.5 and float(dice[1][dice[0].index("notnans")]) == 2
    assert float(hd95[1][hd95[0].index("mean")]) == math.inf and float(hd95[1][hd95[0].index("notnans")]) == 2


def _annotated_case(tmp_path: Path) -> tuple[Path, Path]:
    """A label with classes 0-2 and unannotated voxels (255), and a prediction right on every annotated voxel."""
    label = _slab(0, 3).numpy()
    label[3:5] = 2
    label[6:] = 255
    pred = label.copy()
    pred[6:] = 1  # anything where nothing is annotated
    return (_write(tmp_path / "labels" / "case.nii.gz", label), _write(tmp_path / "pred" / "case_seg.nii.gz", pred))


@pytest.mark.parametrize("labels", ["folder", "dataset.json"])
def test_evaluate_leaves_out_the_ignore_value(tmp_path, capsys, labels):
    label, _ = _annotated_case(tmp_path)
    given = tmp_path / "labels"
    if labels == "dataset.json":
        given = tmp_path / "dataset.json"
        given.write_text(json.dumps({"labels": {"0": "background", "1": "a", "2": "b"},
                                     "test": [{"image": str(label), "label": str(label)}]}))
    code, err = cli(capsys, "evaluate", "--pred", tmp_path / "pred", "--labels", given)
    assert code == 0, err
    dice = _csv(tmp_path / "pred" / "dice_raw.csv")
    names = ["a", "b"] if labels == "dataset.json" else ["1", "2"]
    assert dice[0] == ["filename", *names, "mean"]  # two foreground classes, not 255
    assert [float(v) for v in dice[1][1:]] == [1.0, 1.0, 1.0]
    hd95 = _csv(tmp_path / "pred" / "hd95_raw.csv")
    assert [float(v) for v in hd95[1][1:]] == [0.0, 0.0, 0.0]


def test_evaluate_refuses_another_ignore_value_and_the_ignore_value_in_predictions(tmp_path, capsys):
    label, pred = _annotated_case(tmp_path)
    code, err = cli(capsys, "evaluate", "--pred", tmp_path / "pred", "--labels", tmp_path / "labels",
                    "--ignore-index", "9", "--classes", "bg", "a", "b")
    assert code == 2 and "case.nii.gz: label value 255 is not a class index 0..2 (or 9, unannotated)" in err
    _write(pred, np.asarray(nib.load(label).dataobj))  # 255 in the prediction: not a class
    code, err = cli(capsys, "evaluate", "--pred", tmp_path / "pred", "--labels", tmp_path / "labels")
    assert code == 2 and "case_seg.nii.gz: label value 255 is not a class index 0..2" in err
