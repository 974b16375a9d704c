"""The study end to end on tiny data: stages, reuse, holes shared by every method, and its outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from benchmarks.study import ALL_PATTERNS, hole_transforms, run_study
from pconv3d.transforms import RECIPES
from tests.cli_helpers import TINY


def _tiny_overrides() -> dict:
    pairs = dict(zip(TINY[::2], TINY[1::2]))
    import yaml

    return {k[2:]: yaml.safe_load(v) for k, v in pairs.items() if k not in ("--val_interval", "--progress")}


def test_every_method_spells_out_its_inputs():
    """A setting left to train.yaml's default would change a method whenever that default changes."""
    from benchmarks.study import METHODS
    from pconv3d.transforms import InputRecipe

    for slug, method in METHODS.items():
        assert "network_def#_target_" in method.overrides, slug
        assert method.overrides["recipe"].keys() == InputRecipe().as_dict().keys(), slug


def test_the_rarely_overlay_is_the_studied_setting():
    """configs/holes_rarely.yaml is what the study measured as "rarely, all axes"."""
    import yaml

    from benchmarks.study import CANDIDATES
    from tests.cli_helpers import ROOT

    assert yaml.safe_load((ROOT / "configs" / "holes_rarely.yaml").read_text()) == CANDIDATES["rarely, all axes"]


def test_study_runs_its_stages_and_writes_tables(dataset, tmp_path, capsys):
    out = tmp_path / "study"
    methods = ("unet_interp", "unet_interp_noholes", "gated")
    kwargs = dict(epochs=1, seeds=(0, 1), methods=methods, budget_methods=("unet_interp_noholes", "gated"), patterns=("random", "regions", "small boxes"),
                  fractions=(0.0, 0.5), candidates=("default", "often, all axes"), n_test=2, kind="phantom", size=24,
                  extra=_tiny_overrides())
    rows = run_study(out, **kwargs)
    assert {r["seed"] for r in rows} == {0, 1}
    # a method with one allowed setting is not tuned; a tuned method's first seed is its tuning run, reused
    assert not (out / "tune" / "unet_interp_noholes").exists() and (out / "final" / "unet_interp_noholes" / "seed0").is_dir()
    assert sorted(p.name for p in (out / "tune" / "unet_interp").iterdir()) == ["default", "often_all_axes"]
    assert sorted(p.name for p in (out / "final" / "unet_interp").iterdir()) == ["seed1"]
    assert all(np.isnan(r["dice_missing"]) for r in rows if r["missing"] == 0)
    assert any(np.isfinite(r["dice_missing"]) for r in rows if r["missing"] == 0.5)
    summary = (out / "summary.md").read_text()
    assert "Paired difference to the best baseline (UNet, interpolated" in summary and "A larger budget" in summary
    # each design of the larger budget against its baseline, pattern by pattern too
    assert ("GatedUNet, interpolated + confidence channel minus UNet, interpolated, trained on complete volumes at "
            "the larger budget, paired: nothing missing") in summary and ", regions " in summary
    assert "by pattern" in summary and "UNet, interpolated, trained on complete volumes: none" in summary
    # the per-row check names the one method that is not an interpolation baseline, over 2 rows with holes + 0 %
    assert "| GatedUNet, interpolated + confidence channel | " in summary.split("best interpolation baseline of each row")[1]
    # the routing recipe is derived from the two trainings it routes between, its threshold chosen on validation
    assert {r["method"] for r in rows} == set(methods) | {"routed"} and "Routed by hole reach" in summary
    assert "reach <= " in summary.split("\n")[0]
    assert " of 3 |" in summary
    # twice the budget: the best method and the best baseline, and their paired difference at both budgets
    assert " at 1x, " in summary and len(list((out / "budget2x").iterdir())) == 2
    # the route's threshold, chosen at 1x, routes the larger budget's networks too
    larger = [r for r in csv.DictReader((out / "results.csv").open()) if r["epochs"] == "2"]
    assert {r["method"] for r in larger} == {"unet_interp_noholes", "gated", "routed"}
    # the held-out pattern is reported apart and was not used to choose settings
    assert "small boxes (held out)" in summary and "held out: all voxels" in summary
    assert "(held-out patterns)" in summary and "training wall time" in summary
    tuned = json.loads((out / "tune" / "unet_interp" / "default" / "scores_validation.json").read_text())
    assert {r["pattern"] for r in tuned["rows"]} == {"random", "regions"}
    assert all(r["wall_s"] > 0 and r["epochs"] == 1 for r in rows)
    assert (out / "dice_vs_missing.png").stat().st_size > 0 and (out / "results.csv").is_file()
    # every method and seed saw the same holes: the test volumes' masks are a function of case and pattern only
    before = {str(p): p.stat().st_mtime_ns for p in out.rglob("*.*") if p.suffix in (".pt", ".json")}
    again = run_study(out, **kwargs)  # complete trainings and their scores are reused
    assert json.dumps(again) == json.dumps(rows)  # (NaN == NaN as text)
    assert {str(p): p.stat().st_mtime_ns for p in out.rglob("*.*") if p.suffix in (".pt", ".json")} == before


def test_hole_transforms_keep_the_acquired_voxels(dataset):
    """The same holes whatever the recipe, and a soft mask is 1 exactly where a binary one is."""
    case = {"image": str(sorted((dataset / "imagesTs").iterdir())[0]), "label": str(sorted((dataset / "labelsTs").iterdir())[0])}
    for pattern in ALL_PATTERNS:
        soft = hole_transforms(pattern, 0.5, RECIPES["gated"])(dict(case))
        binary = hole_transforms(pattern, 0.5, RECIPES["partial"])(dict(case))["mask"]
        assert soft["image"].shape[0] == 2  # image and confidence channel
        acquired = binary == 1
        assert 0.3 < 1 - float(acquired.float().mean()) < 0.9, pattern
        assert torch.equal(soft["mask"] == 1, acquired)
        assert torch.all((soft["mask"][~acquired] > 0) & (soft["mask"][~acquired] < 1))


def test_routed_takes_each_volume_from_one_network():
    from benchmarks.study import routed

    def rows(method, dice, reach):
        return [{"method": method, "case": c, "pattern": "p", "missing": 0.5, "class": k, "seed": 0, "reach": reach[c],
                 "dice": dice, "wall_s": 10.0} for c in range(2) for k in (1, 2)]

    reach = {0: 1.0, 1: 5.0}
    out = routed(rows("plain", 0.8, reach), rows("gated", 0.6, reach), threshold=2)
    assert [(r["case"], r["dice"]) for r in out] == [(0, 0.8), (0, 0.8), (1, 0.6), (1, 0.6)]
    assert {r["method"] for r in out} == {"routed"} and {r["wall_s"] for r in out} == {20.0}
    # a gated network fine-tuned from the plain one counts the plain training in its wall time already
    out = routed(rows("unet_interp_noholes", 0.8, reach), rows("gated_from_unet", 0.6, reach), 0, "routed_from_unet")
    assert [r["dice"] for r in out] == [0.6] * 4 and {r["wall_s"] for r in out} == {10.0}
    assert {r["method"] for r in out} == {"routed_from_unet"}
    validation = [{k: v for k, v in r.items() if k not in ("method", "wall_s")} for r in rows("x", 0.7, reach)]
    assert [r["dice"] for r in routed(validation, validation, 2)] == [0.7] * 4  # rows of no method, no wall time


def test_a_method_started_from_another_needs_its_training_of_the_same_seed(tmp_path):
    from benchmarks.study import METHODS, train

    (tmp_path / "data").mkdir()
    with pytest.raises(FileNotFoundError, match=r"final/unet_interp_noholes/seed2/best.pt, which is not trained yet"):
        train(tmp_path / "data", tmp_path / "final" / "gated_from_unet" / "seed2", 1, 2,
              METHODS["gated_from_unet"].overrides)
    assert not (tmp_path / "final" / "gated_from_unet").exists()


def test_compare_results_pairs_two_methods_of_a_results_table(tmp_path):
    from benchmarks.compare_results import compare, read_rows
    from benchmarks.study import ALL_PATTERNS, FRACTIONS

    rng = np.random.default_rng(0)
    fields = ["method", "seed", "epochs", "case", "pattern", "missing", "class", "dice", "dice_missing"]
    with (tmp_path / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for case, seed, pattern, missing, cls in np.ndindex(3, 2, len(ALL_PATTERNS), len(FRACTIONS), 2):
            base = rng.uniform(0.5, 0.9)  # the same voxels and holes for both: a shift of 0.01 + 0.01 per case
            row = dict(seed=seed, case=f"c{case}", pattern=list(ALL_PATTERNS)[pattern], missing=FRACTIONS[missing],
                       **{"class": cls})
            w.writerow({**row, "method": "b", "epochs": 250, "dice": base, "dice_missing": base})
            w.writerow({**row, "method": "b", "epochs": 1000, "dice": 0.0, "dice_missing": 0.0})
            w.writerow({**row, "method": "a", "epochs": 250, "dice": base + 0.01 * (case + 1),
                        "dice_missing": base + 0.01 * (case + 1)})
    got = compare(read_rows(tmp_path / "results.csv", "a:250"), read_rows(tmp_path / "results.csv", "b:250"))
    assert {round(d.mean, 6) for d in got.values()} == {0.02} and all(d.n == 3 for d in got.values())
    assert "held out" in got and "slices + boxes" in got
    with pytest.raises(SystemExit, match="no rows of method 'a' with epochs '1000'"):
        read_rows(tmp_path / "results.csv", "a:1000")
    both = read_rows(tmp_path / "results.csv", "b:250,1000")  # a routed method's rows come from two trainings
    assert len(both) == 2 * len(read_rows(tmp_path / "results.csv", "b:250"))
