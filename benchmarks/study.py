"""The missing-data study: which way of giving a network incomplete volumes segments them best, with
evidence that can tell a gain from noise.

Methods (:data:`METHODS`) are ``configs/train.yaml`` with a few switches: MONAI's ``UNet`` on zero-filled or
interpolated input (trained with and without simulated holes, with and without the mask as an extra channel),
``PartialUNet`` given the mask, and ``PartialUNet`` on interpolated input with a soft (confidence) mask. Every
method trains on the same data with the same budget for each of ``seeds``.

1. ``tune``: per method, the training settings that differ by method (how often and how much training simulates
   holes, :data:`CANDIDATES`) are chosen by mean Dice on the validation cases (one seed), fairly for every method.
2. ``final``: every method with its chosen settings, for every seed, scored on the test cases.
3. ``budget``: the best method and the best baseline again at twice the epochs, to check that the ranking holds.

Test holes (:data:`PATTERNS`): slices missing along the slice axis (random, regular, one slab), slices missing
along another axis, and masked regions (boxes), at :data:`FRACTIONS`; the same holes for every method and seed.
Scores per case: foreground Dice on all voxels and on the missing voxels alone (:mod:`pipelines.evaluation`).
Writes ``results.csv`` (a row per method, seed, case, pattern, fraction and class), ``summary.md`` (mean ± sd over
seeds and cases, and each method minus the best baseline, paired over case, seed and holes, with a 95 %
interval: :mod:`benchmarks.paired`) and ``dice_vs_missing.png``. Trainings are reused when complete and resumed when
interrupted, so the study can be stopped and started again. Run time on 2 CPU cores at 250 epochs: about 65 s
per training, 5 methods x (3 candidates + 3 seeds) + 2 x 3 at twice the budget, about an hour in all.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose

from benchmarks.paired import PairedDifference, paired_difference
from pconv3d.data import make_dataset
from pconv3d.io.datalist import DATASET_JSON, generated_dataset_settings, load_datalist
from pconv3d.io.sitk import atomic_write
from pconv3d.transforms import InputRecipe, hole_reach
from pconv3d.transforms.recipes import IMAGE, LABEL, MASK, infer_transforms
from pipelines.bundle import run_workflow
from pipelines.config import load_config
from pipelines.evaluation import score_case
from pipelines.handlers import BEST, load_checkpoint, network_from_checkpoint
from pipelines.outputs import completed_epochs, training_state
from pipelines.records import input_recipe
from pipelines.train import datalist_split

UNET = "monai.networks.nets.UNet"
FRACTIONS = (0.0, 0.25, 0.5, 0.75)
SLICE_AXIS = 2
WALL = "wall.json"


@dataclass(frozen=True)
class Method:
    """A way of handling missing voxels: training-config overrides, whether it is a baseline, and the training
    settings (:data:`CANDIDATES`) it is tuned over."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    baseline: bool = False
    candidates: tuple[str, ...] = ("default", "often, all axes")


def method(network: str, mask_input: bool = False, fill: str | None = None, mask_as_channel: bool = False,
            **more: Any) -> dict[str, Any]:
    """Training-config overrides of a method: its network and its whole input recipe, spelled out, so that a
    method does not change whenever a config's default does."""
    return {"network_def#_target_": network,
            "recipe": {"mask_input": mask_input, "fill": fill, "mask_as_channel": mask_as_channel}, **more}


PARTIAL, GATED = "pconv3d.networks.PartialUNet", "pconv3d.networks.GatedUNet"
METHODS: dict[str, Method] = {
    "unet_zero": Method("UNet, zero-filled", method(UNET), True),
    "unet_interp": Method("UNet, interpolated", method(UNET, fill="interpolate"), True),
    "unet_interp_noholes": Method("UNet, interpolated, trained on complete volumes", method(UNET, fill="interpolate"),
                                  True, ("none",)),
    "unet_interp_channel": Method("UNet, interpolated + mask channel",
                                  method(UNET, fill="interpolate", mask_as_channel=True), True),
    "unet_wide_soft_channel": Method("UNet (GatedUNet's size), interpolated + confidence channel", method(
        UNET, fill="soft", mask_as_channel=True, **{"network_def#channels": [22, 44, 88, 176]}), True),
    "partial": Method("PartialUNet + mask", method(PARTIAL, mask_input=True)),
    "partial_soft": Method("PartialUNet, interpolated + soft mask", method(PARTIAL, mask_input=True, fill="soft")),
    "gated": Method("GatedUNet, interpolated + confidence channel", method(GATED, fill="soft", mask_as_channel=True)),
}
# the same network at the setting that the validation screen (benchmarks/screen_designs.py) found best with
# nothing missing: a second operating point, not a second tuning
METHODS["gated_rarely"] = Method("GatedUNet, holes simulated rarely", METHODS["gated"].overrides,
                                 candidates=("rarely, all axes",))
# issue 24's designs, at the default's chosen hole setting: each patch also seen complete in the same step, the
# holed prediction pulled toward the complete one; and its equal-time control, the default trained as long
METHODS["gated_consistency"] = Method("GatedUNet, consistency training",
                                      {**METHODS["gated"].overrides, "consistency": {"weight": 1.0}},
                                      candidates=("often, all axes",))
METHODS["gated_long"] = Method("GatedUNet, 1.5x epochs", {**METHODS["gated"].overrides, "epochs_scale": 1.5},
                               candidates=("often, all axes",))
# the equal-time control of the default against the plain recipe: the complete-volume UNet trained as long as
# the default trains (its whole training took 1.42-1.45x the UNet's at 250 and 1000 epochs on this CPU)
METHODS["unet_interp_noholes_long"] = Method("UNet, interpolated, complete volumes, 1.45x epochs (the default's time)",
                                             {**METHODS["unet_interp_noholes"].overrides, "epochs_scale": 1.45},
                                             True, ("none",))
# the default started from the complete-volume UNet of the same seed (--init-from, the mask channel's weights at
# 0) and fine-tuned with holes: distillation by initialisation, meant to keep the UNet's accuracy on complete
# volumes; its fine-tuning length, 0.5x the epochs, was chosen over 0.3x on validation cases
# (benchmarks/screen_designs.py, 3 seeds). Its wall time is both trainings' (_rows).
METHODS["gated_from_unet"] = Method("GatedUNet started from the complete-volume UNet, fine-tuned 0.5x",
                                    {**METHODS["gated"].overrides, "init_from_method": "unet_interp_noholes",
                                     "epochs_scale": 0.5}, candidates=("often, all axes",))
# issue 25: the default with one gate map per block instead of a gate per channel (a fraction of the gates' cost)
METHODS["gated_light"] = Method("GatedUNet, one gate map per block",
                                {**METHODS["gated"].overrides, "network_def#gate_channels": 1},
                                candidates=("often, all axes",))
# training settings tuned per method on the validation cases ("none" is training without simulated holes);
# spelled out, so that the study does not change with the configs' defaults ("default" was train.yaml's until
# the study made "often, all axes" the default)
CANDIDATES: dict[str, dict[str, Any]] = {
    "none": {"simulate_holes": False},
    "default": {"drop_slices": {"prob": 0.5, "axes": [2], "fraction": [0.1, 0.5]},
                "mask_regions": {"prob": 0.3, "num_regions": [1, 3], "size": [0.1, 0.35]}},
    "often, all axes": {"drop_slices": {"prob": 0.8, "axes": [0, 1, 2], "fraction": [0.1, 0.5]},
                        "mask_regions": {"prob": 0.5, "num_regions": [1, 3], "size": [0.1, 0.35]}},
    "rarely, all axes": {"drop_slices": {"prob": 0.3, "axes": [0, 1, 2], "fraction": [0.1, 0.5]},
                         "mask_regions": {"prob": 0.2, "num_regions": [1, 3], "size": [0.1, 0.35]}},
}
# recipes of two trainings (issue 24's fallback, `pconv3d infer --plain-model`): the plain UNet where interpolation
# can fill the holes, a gated network where it cannot, by how far the holes reach; the threshold (voxels) is
# chosen on validation cases (complete volumes always go to the plain UNet). Derived method: (plain, gated).
ROUTES = {"routed": ("unet_interp_noholes", "gated"), "routed_from_unet": ("unet_interp_noholes", "gated_from_unet")}
REACH_THRESHOLDS = (0, 1, 2, 3, 4, 6, 8)
DERIVED = {"routed": Method("Routed by hole reach: UNet (complete volumes) or GatedUNet"),
           "routed_from_unet": Method("Routed by hole reach: UNet or GatedUNet started from it")}
# what a MONAI user does today: the baselines that the per-row target compares to
INTERPOLATION_BASELINES = ("unet_interp", "unet_interp_noholes")
# test holes: the arguments of the library's seeded holes (infer_transforms' drop_slices and mask_regions) per
# pattern; a pattern of two kinds gives each half the fraction
PATTERNS: dict[str, dict[str, dict[str, Any]]] = {
    "random": {"drop_slices": {"pattern": "random", "axis": SLICE_AXIS}},
    "regular": {"drop_slices": {"pattern": "regular", "axis": SLICE_AXIS}},
    "block": {"drop_slices": {"pattern": "block", "axis": SLICE_AXIS}},
    "random, axis 0": {"drop_slices": {"pattern": "random", "axis": 0}},
    "regions": {"mask_regions": {}},
}
# patterns that no method or setting was chosen on (issue 24): reported apart from PATTERNS' averages
HELD_OUT: dict[str, dict[str, dict[str, Any]]] = {
    "block, axis 0": {"drop_slices": {"pattern": "block", "axis": 0}},
    "small boxes": {"mask_regions": {"size": [0.04, 0.12]}},
    "slices + boxes": {"drop_slices": {"pattern": "random", "axis": 1}, "mask_regions": {}},
}
ALL_PATTERNS = {**PATTERNS, **HELD_OUT}


def hole_transforms(pattern: str, fraction: float, recipe: InputRecipe) -> Compose:
    """The library's inference transforms for a test case, with ``pattern`` holes cut at ``fraction`` before
    normalization (seeded per case: the same holes for every method and seed) and the input shaped by
    ``recipe``. Acquired voxels are where the mask is 1, whatever the recipe (a soft mask is 1 there alone)."""
    kinds = ALL_PATTERNS[pattern] if fraction > 0 else {}
    holes = {kind: {**args, "fraction": fraction / len(kinds), "seed": 0} for kind, args in kinds.items()}
    return infer_transforms(**holes, recipe=recipe)


def score_network(run: Path, cases: Sequence[dict], patterns: Sequence[str], fractions: Sequence[float],
                  roi: Sequence[int], num_classes: int, split: str = "test") -> list[dict[str, Any]]:
    """Rows of foreground Dice (all voxels, missing voxels) per case, pattern, fraction and class; kept in
    ``run/scores_{split}.json`` and reused while the run's ``best.pt`` and the cases, holes and window are the
    same."""
    scores = run / f"scores_{split}.json"
    key = {"cases": [Path(c[IMAGE]).name for c in cases], "patterns": list(patterns), "fractions": list(fractions),
           "roi": list(roi), "best": (run / BEST).stat().st_mtime_ns}
    saved = json.loads(scores.read_text()) if scores.is_file() else {}
    if saved.get("key") == key:
        return saved["rows"]
    rows = _score(run, cases, patterns, fractions, roi, num_classes)
    atomic_write(scores, lambda p: p.write_text(json.dumps({"key": key, "rows": rows})), overwrite=True)
    return rows


@torch.no_grad()
def _score(run: Path, cases: Sequence[dict], patterns: Sequence[str], fractions: Sequence[float],
           roi: Sequence[int], num_classes: int) -> list[dict[str, Any]]:
    network = network_from_checkpoint(run / BEST)
    recipe = input_recipe(load_checkpoint(run / BEST), run / BEST)
    inferer = load_config(["inference.yaml"], {"patch_size": list(roi)}).get_parsed_content("inferer")
    rows = []
    for pattern in patterns:
        for fraction in fractions:
            for case in cases:
                files = tuple((f, Path(f).stat().st_mtime_ns) for f in (case[IMAGE], case[LABEL]))
                x, m, label, acquired = _case_inputs(files, pattern, fraction, recipe)
                kwargs = {"condition": m} if recipe.mask_input else {}
                logits = inferer(x, network, **kwargs)
                missing = ~acquired
                s = score_case(logits[0].argmax(0), label, num_classes, region=missing if missing.any() else None)
                reach = hole_reach(acquired)
                for c in range(num_classes - 1):
                    rows.append({"case": Path(case[IMAGE]).name, "pattern": pattern, "missing": fraction, "class": c + 1,
                                 "reach": reach,
                                 "dice": float(s["dice"][c]),
                                 "dice_missing": float(s["dice_region"][c]) if "dice_region" in s else float("nan")})
    return rows


@functools.lru_cache(maxsize=1024)
def _case_inputs(files: tuple[tuple[str, int], ...], pattern: str, fraction: float,
                 recipe: InputRecipe) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A case with its holes, as the network takes it: (image, mask) batched, the label and the acquired
    voxels (spatial). ``files``: the image and label paths with their modification times. Kept for the
    process, since every method and seed scores the same inputs: the key is everything they depend on (the
    files as written, and holes drawn from fixed seeds), so an entry never goes stale."""
    (image, _), (label, _) = files
    d = hole_transforms(pattern, fraction, recipe)({IMAGE: image, LABEL: label})
    return d[IMAGE][None].as_tensor(), d[MASK][None].as_tensor(), d[LABEL][0].as_tensor(), d[MASK][0].as_tensor() == 1


def train(data: Path, run: Path, epochs: int, seed: int, overrides: dict[str, Any]) -> Path:
    """Train into ``run`` unless a complete training is there; an interrupted one continues. ``overrides`` may
    scale the epochs (``epochs_scale``: an equal-time control trains a method longer) and start from another
    method's training of the same seed and stage (``init_from_method``: ``run``'s stage folder (``final``,
    ``budget4x``, a screen's output) ``/METHOD/seedN/best.pt``, as ``--init-from``). The training's wall time,
    the whole workflow as ``pconv3d train`` runs it, is added up in ``run/wall.json``."""
    overrides = dict(overrides)
    epochs = round(epochs * overrides.pop("epochs_scale", 1))
    source = started_from(run, seed, overrides.pop("init_from_method", None))
    if source is not None:
        if not (source / BEST).is_file():
            raise FileNotFoundError(f"{run} starts from {source / BEST}, which is not trained yet")
        overrides["init_from"] = str(source / BEST)
    state = training_state(run, epochs)
    if state != "complete":
        resume = state == "interrupted"
        start = time.perf_counter()
        run_workflow(["train.yaml"], {"dataset_dir": str(data), "output_dir": str(run), "seed": seed, "progress": False,
                                      "resume": resume, "overwrite": not resume, **overrides, "epochs": epochs}, [])
        before = training_seconds(run) if resume else 0.0
        (run / WALL).write_text(json.dumps({"seconds": before + time.perf_counter() - start}))
    return run


def started_from(run: Path, seed: int, method: str | None) -> Path | None:
    """The training that ``run`` starts from when its method has ``init_from_method``: ``method``'s training of
    the same seed in ``run``'s stage folder (``final``, ``budget4x``, a screen's output); ``None`` without one."""
    return None if method is None else run.parents[1] / method / f"seed{seed}"


def training_seconds(run: Path) -> float:
    """The wall time recorded for the training in ``run`` (NaN if none was: trained before it was recorded)."""
    wall = run / WALL
    return float(json.loads(wall.read_text())["seconds"]) if wall.is_file() else float("nan")


def _mean_dice(rows: list[dict[str, Any]], key: str = "dice") -> float:
    return float(np.nanmean([r[key] for r in rows]))


def study_data(out: Path, kind: str = "mni", size: int = 48, n_test: int = 8) -> tuple[Path, int, list[dict], list[dict]]:
    """The study's dataset under ``out/data`` (written unless there with these settings): its folder, number of
    classes, validation cases and test cases."""
    data = out / "data"
    wanted = {"kind": kind, "n_train": 8, "n_test": n_test, "size": size, "seed": 0}
    if (generated_dataset_settings(data) or {}) != wanted:
        make_dataset(kind, data, n_train=8, n_test=n_test, size=size, seed=0, overwrite=True)
    header = json.loads((data / DATASET_JSON).read_text())
    return data, len(header["labels"]), datalist_split(str(data), "validation"), load_datalist(data / DATASET_JSON, "test")


def run_study(output: str | Path = "outputs/study", epochs: int = 250, seeds: Sequence[int] = (0, 1, 2),
              methods: Sequence[str] = tuple(METHODS), patterns: Sequence[str] = tuple(PATTERNS),
              fractions: Sequence[float] = FRACTIONS, candidates: Sequence[str] = tuple(CANDIDATES),
              n_test: int = 8, kind: str = "mni", size: int = 48, extra: dict[str, Any] | None = None,
              budget: int = 2, budget_methods: Sequence[str] | None = None,
              budget_seeds: Sequence[int] | None = None) -> list[dict]:
    """Run the three stages (module doc) into ``output``; returns the rows of the final stage.

    ``extra`` are config overrides for every training (the tests make the networks tiny with it). ``budget``:
    the last stage's multiple of ``epochs``, for ``budget_methods`` (default: the best method and the best
    baseline), with ``budget_seeds`` (default: ``seeds``). Settings are chosen on :data:`PATTERNS` alone, never on
    the held-out ones."""
    out = Path(output)
    data, num_classes, validation, test = study_data(out, kind, size, n_test)
    roi, extra = [32, 32, 32], dict(extra or {})
    roi = extra.get("patch_size", roi)
    start = time.perf_counter()

    # settings are chosen on the validation cases with holes of the patterns that are not held out
    on_validation = lambda run: score_network(run, validation, [p for p in patterns if p in PATTERNS],  # noqa: E731
                                              [f for f in fractions if f > 0] or [0.0], roi, num_classes, "validation")
    chosen: dict[str, str] = {}
    tuned: dict[str, Path] = {}  # the first seed's training with the chosen settings: the final stage reuses it
    for slug in methods:  # 1. tune on validation cases, first seed
        allowed = [c for c in candidates if c in METHODS[slug].candidates] or list(METHODS[slug].candidates)
        if len(allowed) == 1:
            chosen[slug] = allowed[0]
            continue
        scores, runs = {}, {}
        for cand in allowed:
            runs[cand] = train(data, out / "tune" / slug / cand.replace(", ", "_").replace(" ", "_"), epochs, seeds[0],
                               {**METHODS[slug].overrides, **CANDIDATES[cand], **extra})
            scores[cand] = _mean_dice(on_validation(runs[cand]))
        chosen[slug] = max(scores, key=scores.get)
        tuned[slug] = runs[chosen[slug]]
        print(f"{METHODS[slug].name}: validation Dice {', '.join(f'{c} {v:.3f}' for c, v in scores.items())}; "
              f"chosen: {chosen[slug]} ({time.perf_counter() - start:.0f} s)", flush=True)

    rows: list[dict[str, Any]] = []
    first: dict[str, Path] = {}  # each method's training with the first seed
    for slug in methods:  # 2. every seed, test cases
        for seed in seeds:
            same = seed == seeds[0] and slug in tuned  # same data, settings and seed: the same training
            run = train(data, tuned[slug] if same else out / "final" / slug / f"seed{seed}", epochs, seed,
                        {**METHODS[slug].overrides, **CANDIDATES[chosen[slug]], **extra})
            first.setdefault(slug, run)
            rows += _rows(slug, seed, run, score_network(run, test, patterns, fractions, roi, num_classes))
        print(f"{METHODS[slug].name}: test Dice {_mean_dice([r for r in rows if r['method'] == slug]):.3f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)

    reach: dict[str, float] = {}  # each route's threshold, chosen on validation, reused at the larger budget
    for name, route in ROUTES.items():  # derived methods: no training of their own
        if set(route) <= set(methods):
            validation_rows = [on_validation(first[m]) for m in route]
            scores = {t: _mean_dice(routed(*validation_rows, t)) for t in REACH_THRESHOLDS}
            reach[name] = max(scores, key=scores.get)
            chosen[name] = f"reach <= {reach[name]}"
            rows += routed(*([r for r in rows if r["method"] == m] for m in route), reach[name], name)
            print(f"{DERIVED[name].name}: validation Dice {', '.join(f'{t} {v:.3f}' for t, v in scores.items())}; "
                  f"chosen: {chosen[name]}", flush=True)
    write_outputs(out, rows, [], chosen)  # the main result, before the budget check
    ranked = sorted(methods, key=lambda m: -_mean_dice([r for r in rows if r["method"] == m]))
    # the best method and the best baseline (the runner-up if the best is a baseline or there is none): does the
    # lead hold with more training?
    rivals = [m for m in ranked[1:] if METHODS[m].baseline and not METHODS[ranked[0]].baseline] or ranked[1:]
    top = list(budget_methods) if budget_methods is not None else ranked[:1] + rivals[:1]
    budget_rows: list[dict[str, Any]] = []
    for slug in top:  # 3. a larger budget
        for seed in seeds if budget_seeds is None else budget_seeds:
            run = train(data, out / f"budget{budget}x" / slug / f"seed{seed}", budget * epochs, seed,
                        {**METHODS[slug].overrides, **CANDIDATES[chosen[slug]], **extra})
            budget_rows += _rows(slug, seed, run, score_network(run, test, patterns, fractions, roi, num_classes))
    for name, route in ROUTES.items():  # the same rules, on the larger budget's networks
        if name in reach and set(route) <= set(top):
            budget_rows += routed(*([r for r in budget_rows if r["method"] == m] for m in route), reach[name], name)
    write_outputs(out, rows, budget_rows, chosen)
    print(f"study done in {time.perf_counter() - start:.0f} s; results in {out.resolve()}")
    return rows


def routed(plain: list[dict[str, Any]], gated: list[dict[str, Any]], threshold: float,
           name: str = "routed") -> list[dict[str, Any]]:
    """The rows of a routing recipe (method ``name``) that runs ``plain``'s network on a volume whose holes reach
    at most ``threshold`` voxels (:func:`~pconv3d.transforms.hole_reach`) and ``gated``'s otherwise,
    from the two methods' rows of the same cases, holes and seeds. Its wall time is both trainings': the two
    rows' sum, or ``gated``'s alone where that one started from ``plain``'s training and counts it already."""
    key = lambda r: (r["case"], r["pattern"], r["missing"], r["class"], r.get("seed"))  # noqa: E731
    by_key = {key(r): r for r in plain}
    out = []
    for r in gated:
        p = by_key[key(r)]
        wall = {}
        if "wall_s" in r:  # a test row (validation rows name no method and no wall time)
            counted = METHODS[r["method"]].overrides.get("init_from_method") == p["method"]
            wall = {"wall_s": r["wall_s"] + (0 if counted else p["wall_s"])}
        out.append({**(p if r["reach"] <= threshold else r), "method": name, **wall})
    return out


def _rows(method: str, seed: int, run: Path, scores: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The study's rows of one training: its method, seed, epochs and wall time, then each score. A method that
    starts from another's training pays for both: their wall times are added. ``method`` may also be a label
    outside :data:`METHODS` (``benchmarks.check_validation`` names a screen's variants so): it started from
    nothing."""
    wall = training_seconds(run)
    start = METHODS[method].overrides.get("init_from_method") if method in METHODS else None
    source = started_from(run, seed, start)
    if source is not None:
        wall += training_seconds(source)
    return [{"method": method, "seed": seed, "epochs": completed_epochs(run), "wall_s": round(wall, 1), **r}
            for r in scores]


def _grid(rows: list[dict[str, Any]], method: str, key: str, patterns: Sequence[str], fractions: Sequence[float]) -> np.ndarray:
    """``(cases, seeds, patterns x fractions)`` of the class-averaged score, NaN where absent."""
    cases, seeds = sorted({r["case"] for r in rows}), sorted({r["seed"] for r in rows})
    cells = [(p, f) for p in patterns for f in fractions]
    grid = np.full((len(cases), len(seeds), len(cells)), np.nan)
    sums: dict[tuple, list[float]] = {}
    for r in rows:
        if r["method"] == method and (r["pattern"], r["missing"]) in cells:
            sums.setdefault((r["case"], r["seed"], (r["pattern"], r["missing"])), []).append(r[key])
    for (case, seed, cell), values in sums.items():
        grid[cases.index(case), seeds.index(seed), cells.index(cell)] = np.nanmean(values) if np.isfinite(values).any() else np.nan
    return grid


def summary_markdown(rows: list[dict[str, Any]], budget_rows: list[dict[str, Any]], chosen: dict[str, str]) -> str:
    """Mean ± sd tables per pattern and fraction, each method's training wall time, and paired differences to
    the best baseline: averaged over :data:`PATTERNS` (what settings were chosen on) and, apart, over the
    held-out patterns."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    patterns = list(dict.fromkeys(r["pattern"] for r in rows))
    selected, held_out = _selected_and_held_out(patterns)
    fractions = sorted({r["missing"] for r in rows})
    lines = ["Settings chosen on validation cases: " + "; ".join(f"{_method(m).name}: {chosen[m]}" for m in methods), ""]
    for key, title in (("dice", "all voxels"), ("dice_missing", "missing voxels")):
        lines += [f"### Mean foreground Dice on {title} (± sd over seeds and cases)", "",
                  "| pattern | missing | " + " | ".join(_method(m).name for m in methods) + " |",
                  "|---|---|" + "---|" * len(methods)]
        for p in patterns:
            for f in fractions:
                if key == "dice_missing" and f == 0:
                    continue
                cells = []
                for m in methods:
                    v = _grid(rows, m, key, [p], [f]).reshape(-1)
                    cells.append(f"{np.nanmean(v):.3f} ± {np.nanstd(v):.3f}" if np.isfinite(v).any() else "-")
                lines.append(f"| {_label(p)} | {f:.0%} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += _cost_table(rows, methods, selected, fractions)
    baselines = [m for m in methods if _method(m).baseline]
    missing = [f for f in fractions if f > 0]
    if baselines and missing and selected:
        best = max(baselines, key=lambda m: np.nanmean(_grid(rows, m, "dice", selected, missing)))
        diff = lambda m, key, ps, fs=missing: paired_difference(_grid(rows, m, key, ps, fs),  # noqa: E731
                                                                _grid(rows, best, key, ps, fs))
        columns = [("Dice, all voxels", "dice", selected), ("Dice, missing voxels", "dice_missing", selected)]
        columns += [("held out: all voxels", "dice", held_out), ("held out: missing voxels", "dice_missing", held_out)
                    ] if held_out else []
        lines += [f"### Paired difference to the best baseline ({_method(best).name}), 25-75 % missing, "
                  "mean [95 % interval] over cases", "", "| method | " + " | ".join(c[0] for c in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        lines += [f"| {_method(m).name} | " + " | ".join(str(diff(m, k, ps)) for _, k, ps in columns) + " |"
                  for m in methods if m != best]
        lines += ["", f"### Paired difference to {_method(best).name} by pattern (Dice, all voxels; 25-75 % missing, "
                  "and nothing missing)", "", "| method | " + " | ".join(map(_label, patterns)) + " | nothing missing |",
                  "|---|" + "---|" * (len(patterns) + 1)]
        for m in methods:
            if m != best:
                complete = diff(m, "dice", patterns[:1], [0.0]) if 0.0 in fractions else "-"
                lines.append(f"| {_method(m).name} | " + " | ".join(str(diff(m, "dice", [p])) for p in patterns)
                             + f" | {complete} |")
        lines.append("")
    lines += _row_check(rows, methods, selected, fractions)
    missing = [f for f in fractions if f > 0]
    if held_out:
        lines += _row_check(rows, methods, held_out, missing, " (held-out patterns)")
    if budget_rows:
        times = sorted({r["epochs"] for r in budget_rows})
        lines += [f"### A larger budget (mean foreground Dice over all patterns and fractions; epochs {times})", "",
                  "| method | 1x | larger |", "|---|---|---|"]
        larger = list(dict.fromkeys(r["method"] for r in budget_rows))
        for m in larger:
            lines.append(f"| {_method(m).name} | {_mean_dice([r for r in rows if r['method'] == m]):.3f} | "
                         f"{_mean_dice([r for r in budget_rows if r['method'] == m]):.3f} |")
        baselines = [m for m in larger if _method(m).baseline]
        for a in (m for m in larger if baselines and not _method(m).baseline):  # each design against the baseline
            b = baselines[0]
            lines += [""] + [f"{_method(a).name} minus {_method(b).name} at the larger budget, paired: " + ", ".join(
                f"{_label(name)} {diff}" for name, diff in paired_summaries(budget_rows, a, b, patterns, missing).items())
                + "."]
            lines += [f"{_method(a).name} minus {_method(b).name}, paired, all rows: "
                      f"{paired_difference(_grid(rows, a, 'dice', patterns, fractions), _grid(rows, b, 'dice', patterns, fractions))}"
                      " at 1x, "
                      f"{paired_difference(_grid(budget_rows, a, 'dice', patterns, fractions), _grid(budget_rows, b, 'dice', patterns, fractions))}"
                      " at the larger budget."]
        lines += _row_check(budget_rows, larger, selected, fractions, " at the larger budget")
    return "\n".join(lines) + "\n"


def paired_summaries(rows: list[dict[str, Any]], a: str, b: str, patterns: Sequence[str],
                     missing: Sequence[float]) -> dict[str, PairedDifference]:
    """``a - b`` in ``rows``, paired (same case, seed and holes): with nothing missing, over ``missing``
    fractions of the selected patterns (all voxels and missing voxels), over the held-out ones, and per pattern;
    a summary is left out when it has no patterns or fractions."""
    selected, held_out = _selected_and_held_out(patterns)
    parts = [("nothing missing", "dice", selected[:1], [0.0]), ("25-75 %", "dice", selected, missing),
             ("25-75 %, missing voxels", "dice_missing", selected, missing), ("held out", "dice", held_out, missing),
             *((p, "dice", [p], missing) for p in patterns)]
    return {name: paired_difference(_grid(rows, a, key, ps, fs), _grid(rows, b, key, ps, fs))
            for name, key, ps, fs in parts if ps and fs}


def _selected_and_held_out(patterns: Sequence[str]) -> tuple[list[str], list[str]]:
    """``patterns`` split into those settings are chosen on and the held-out ones, each in the given order."""
    return [p for p in patterns if p not in HELD_OUT], [p for p in patterns if p in HELD_OUT]


def _method(slug: str) -> Method:
    return METHODS[slug] if slug in METHODS else DERIVED[slug]


def _label(pattern: str) -> str:
    return f"{pattern} (held out)" if pattern in HELD_OUT else pattern


def _cost_table(rows: list[dict[str, Any]], methods: list[str], patterns: list[str], fractions: list[float]) -> list[str]:
    """Each method's training epochs and wall time (the whole training workflow; the median over seeds, robust to
    one training slowed by other work on the machine) next to its Dice with nothing missing and at 25-75 %
    missing."""
    lines = ["### What each method cost to train (wall time of the whole training: median [range] over seeds)", "",
             "| method | epochs | training wall time | Dice, nothing missing | Dice, 25-75 % |", "|---|---|---|---|---|"]
    for m in methods:
        own = [r for r in rows if r["method"] == m]
        walls = np.array([w for w in {(r["seed"], r["wall_s"]) for r in own}], dtype=float)[:, 1]
        epochs = sorted({r["epochs"] for r in own})
        complete = np.nanmean(_grid(rows, m, "dice", patterns[:1], [0.0])) if 0.0 in fractions else float("nan")
        holed = np.nanmean(_grid(rows, m, "dice", patterns, [f for f in fractions if f > 0]))
        lines.append(f"| {_method(m).name} | {', '.join(map(str, epochs))} | {np.nanmedian(walls):.0f} s "
                     f"[{np.nanmin(walls):.0f}-{np.nanmax(walls):.0f}] | {complete:.3f} | {holed:.3f} |")
    return lines + [""]


def _row_check(rows: list[dict[str, Any]], methods: list[str], patterns: list[str], fractions: list[float],
               title: str = "") -> list[str]:
    """Each method against the best interpolation baseline of every row (pattern and fraction, and nothing
    missing): on how many rows it is at least as good, and its worst row."""
    baselines = [m for m in INTERPOLATION_BASELINES if m in methods]
    if not baselines:
        return []
    cells = [(p, f) for p in patterns for f in fractions if f > 0] + [(patterns[0], 0.0)] * (0.0 in fractions)
    best = {c: max(np.nanmean(_grid(rows, m, "dice", [c[0]], [c[1]])) for m in baselines) for c in cells}
    lines = [f"### Against the best interpolation baseline of each row{title} (mean Dice, all voxels)", "",
             "| method | rows at least as good | worst row | difference there |", "|---|---|---|---|"]
    for m in methods:
        if m in baselines:
            continue
        diff = {c: np.nanmean(_grid(rows, m, "dice", [c[0]], [c[1]])) - best[c] for c in cells}
        worst = min(diff, key=diff.get)
        where = "nothing missing" if worst[1] == 0 else f"{worst[0]}, {worst[1]:.0%}"
        lines.append(f"| {_method(m).name} | {sum(d >= 0 for d in diff.values())} of {len(cells)} | {where} | "
                     f"{diff[worst]:+.3f} |")
    return lines + [""]


def write_outputs(out: Path, rows: list[dict], budget_rows: list[dict], chosen: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text = io.StringIO()
    writer = csv.DictWriter(text, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows + budget_rows)
    atomic_write(out / "results.csv", lambda p: p.write_text(text.getvalue()), overwrite=True)
    summary = summary_markdown(rows, budget_rows, chosen)
    atomic_write(out / "summary.md", lambda p: p.write_text(summary), overwrite=True)
    patterns = list(dict.fromkeys(r["pattern"] for r in rows))
    fractions = sorted({r["missing"] for r in rows})
    fig, axes = plt.subplots(1, len(patterns), figsize=(4 * len(patterns), 3.6), sharey=True, squeeze=False)
    for ax, pattern in zip(axes[0], patterns):
        for m in dict.fromkeys(r["method"] for r in rows):
            means = [np.nanmean(_grid(rows, m, "dice", [pattern], [f])) for f in fractions]
            ax.plot([100 * f for f in fractions], means, marker="o", label=_method(m).name)
        ax.set_title(pattern)
        ax.set_xlabel("missing (%)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean foreground Dice")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(out / "dice_vs_missing.png", lambda p: fig.savefig(p, dpi=110), overwrite=True)
    plt.close(fig)
    print(summary)
