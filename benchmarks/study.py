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

from benchmarks.paired import paired_difference
from pconv3d.data import make_dataset
from pconv3d.io.datalist import DATASET_JSON, generated_dataset_settings, load_datalist
from pconv3d.io.sitk import atomic_write
from pconv3d.transforms import InputRecipe
from pconv3d.transforms.recipes import IMAGE, LABEL, MASK, infer_transforms
from pipelines.bundle import run_workflow
from pipelines.config import load_config
from pipelines.evaluation import score_case
from pipelines.handlers import BEST, load_checkpoint, network_from_checkpoint
from pipelines.outputs import training_state
from pipelines.records import input_recipe
from pipelines.train import datalist_split

UNET = "monai.networks.nets.UNet"
FRACTIONS = (0.0, 0.25, 0.5, 0.75)
SLICE_AXIS = 2


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
# what a MONAI user does today: the baselines that the per-row target compares to
INTERPOLATION_BASELINES = ("unet_interp", "unet_interp_noholes")
# test holes: (kind, slice axis, slice pattern)
PATTERNS: dict[str, tuple[str, int | None, str | None]] = {
    "random": ("slices", SLICE_AXIS, "random"),
    "regular": ("slices", SLICE_AXIS, "regular"),
    "block": ("slices", SLICE_AXIS, "block"),
    "random, axis 0": ("slices", 0, "random"),
    "regions": ("regions", None, None),
}


def hole_transforms(pattern: str, fraction: float, recipe: InputRecipe) -> Compose:
    """The library's inference transforms for a test case, with ``pattern`` holes cut at ``fraction`` before
    normalization (seeded per case: the same holes for every method and seed) and the input shaped by
    ``recipe``. Acquired voxels are where the mask is 1, whatever the recipe (a soft mask is 1 there alone)."""
    kind, axis, slices = PATTERNS[pattern]
    holes: dict[str, dict[str, Any]] = {}
    if fraction > 0:
        holes = ({"drop_slices": {"fraction": fraction, "pattern": slices, "axis": axis, "seed": 0}} if kind == "slices"
                 else {"mask_regions": {"fraction": fraction, "seed": 0}})
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
                for c in range(num_classes - 1):
                    rows.append({"case": Path(case[IMAGE]).name, "pattern": pattern, "missing": fraction, "class": c + 1,
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
    """Train into ``run`` unless a complete training is there; an interrupted one continues."""
    state = training_state(run, epochs)
    if state != "complete":
        resume = state == "interrupted"
        run_workflow(["train.yaml"], {"dataset_dir": str(data), "output_dir": str(run), "epochs": epochs, "seed": seed,
                                      "progress": False, "resume": resume, "overwrite": not resume, **overrides}, [])
    return run


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
              n_test: int = 8, kind: str = "mni", size: int = 48, extra: dict[str, Any] | None = None) -> list[dict]:
    """Run the three stages (module doc) into ``output``; returns the rows of the final stage.

    ``extra`` are config overrides for every training (the tests make the networks tiny with it)."""
    out = Path(output)
    data, num_classes, validation, test = study_data(out, kind, size, n_test)
    roi, extra = [32, 32, 32], dict(extra or {})
    roi = extra.get("patch_size", roi)
    start = time.perf_counter()

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
            scores[cand] = _mean_dice(score_network(runs[cand], validation, patterns,
                                                    [f for f in fractions if f > 0] or [0.0], roi, num_classes,
                                                    "validation"))
        chosen[slug] = max(scores, key=scores.get)
        tuned[slug] = runs[chosen[slug]]
        print(f"{METHODS[slug].name}: validation Dice {', '.join(f'{c} {v:.3f}' for c, v in scores.items())}; "
              f"chosen: {chosen[slug]} ({time.perf_counter() - start:.0f} s)", flush=True)

    rows: list[dict[str, Any]] = []
    for slug in methods:  # 2. every seed, test cases
        for seed in seeds:
            same = seed == seeds[0] and slug in tuned  # same data, settings and seed: the same training
            run = train(data, tuned[slug] if same else out / "final" / slug / f"seed{seed}", epochs, seed,
                        {**METHODS[slug].overrides, **CANDIDATES[chosen[slug]], **extra})
            rows += [{"method": slug, "seed": seed, "epochs": epochs, **r}
                     for r in score_network(run, test, patterns, fractions, roi, num_classes)]
        print(f"{METHODS[slug].name}: test Dice {_mean_dice([r for r in rows if r['method'] == slug]):.3f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)

    write_outputs(out, rows, [], chosen)  # the main result, before the budget check
    ranked = sorted(methods, key=lambda m: -_mean_dice([r for r in rows if r["method"] == m]))
    # the best method and the best baseline (the runner-up if the best is a baseline or there is none): does the
    # lead hold with more training?
    rivals = [m for m in ranked[1:] if METHODS[m].baseline and not METHODS[ranked[0]].baseline] or ranked[1:]
    top = ranked[:1] + rivals[:1]
    budget_rows: list[dict[str, Any]] = []
    for slug in top:  # 3. twice the budget
        for seed in seeds:
            run = train(data, out / "budget" / slug / f"seed{seed}", 2 * epochs, seed,
                        {**METHODS[slug].overrides, **CANDIDATES[chosen[slug]], **extra})
            budget_rows += [{"method": slug, "seed": seed, "epochs": 2 * epochs, **r}
                            for r in score_network(run, test, patterns, fractions, roi, num_classes)]
    write_outputs(out, rows, budget_rows, chosen)
    print(f"study done in {time.perf_counter() - start:.0f} s; results in {out.resolve()}")
    return rows


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
    """Mean ± sd tables per pattern and fraction, and paired differences to the best baseline."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    patterns = list(dict.fromkeys(r["pattern"] for r in rows))
    fractions = sorted({r["missing"] for r in rows})
    lines = ["Settings chosen on validation cases: " + "; ".join(f"{METHODS[m].name}: {chosen[m]}" for m in methods), ""]
    for key, title in (("dice", "all voxels"), ("dice_missing", "missing voxels")):
        lines += [f"### Mean foreground Dice on {title} (± sd over seeds and cases)", "",
                  "| pattern | missing | " + " | ".join(METHODS[m].name for m in methods) + " |",
                  "|---|---|" + "---|" * len(methods)]
        for p in patterns:
            for f in fractions:
                if key == "dice_missing" and f == 0:
                    continue
                cells = []
                for m in methods:
                    v = _grid(rows, m, key, [p], [f]).reshape(-1)
                    cells.append(f"{np.nanmean(v):.3f} ± {np.nanstd(v):.3f}" if np.isfinite(v).any() else "-")
                lines.append(f"| {p} | {f:.0%} | " + " | ".join(cells) + " |")
        lines.append("")
    baselines = [m for m in methods if METHODS[m].baseline]
    missing = [f for f in fractions if f > 0]
    if baselines and missing:
        best = max(baselines, key=lambda m: np.nanmean(_grid(rows, m, "dice", patterns, missing)))
        lines += [f"### Paired difference to the best baseline ({METHODS[best].name}), 25-75 % missing, "
                  "mean [95 % interval] over cases", "", "| method | Dice, all voxels | Dice, missing voxels |", "|---|---|---|"]
        for m in methods:
            if m != best:
                d_all = paired_difference(_grid(rows, m, "dice", patterns, missing), _grid(rows, best, "dice", patterns, missing))
                d_miss = paired_difference(_grid(rows, m, "dice_missing", patterns, missing),
                                           _grid(rows, best, "dice_missing", patterns, missing))
                lines.append(f"| {METHODS[m].name} | {d_all} | {d_miss} |")
        lines += ["", f"### Paired difference to {METHODS[best].name} by pattern (Dice, all voxels; 25-75 % missing, "
                  "and nothing missing)", "", "| method | " + " | ".join(patterns) + " | nothing missing |",
                  "|---|" + "---|" * (len(patterns) + 1)]
        for m in methods:
            if m != best:
                cells = [paired_difference(_grid(rows, m, "dice", [p], missing), _grid(rows, best, "dice", [p], missing))
                         for p in patterns]
                complete = paired_difference(_grid(rows, m, "dice", patterns[:1], [0.0]),
                                             _grid(rows, best, "dice", patterns[:1], [0.0])) if 0.0 in fractions else "-"
                lines.append(f"| {METHODS[m].name} | " + " | ".join(map(str, cells)) + f" | {complete} |")
        lines.append("")
    lines += _row_check(rows, methods, patterns, fractions)
    if budget_rows:
        lines += ["### Twice the budget (mean foreground Dice, all patterns and fractions)", "",
                  "| method | 1x | 2x |", "|---|---|---|"]
        twice = list(dict.fromkeys(r["method"] for r in budget_rows))
        for m in twice:
            lines.append(f"| {METHODS[m].name} | {_mean_dice([r for r in rows if r['method'] == m]):.3f} | "
                         f"{_mean_dice([r for r in budget_rows if r['method'] == m]):.3f} |")
        if len(twice) == 2:
            a, b = twice
            diff = [paired_difference(_grid(rs, a, "dice", patterns, fractions), _grid(rs, b, "dice", patterns, fractions))
                    for rs in (rows, budget_rows)]
            lines += ["", f"{METHODS[a].name} minus {METHODS[b].name}, paired, all rows: {diff[0]} at 1x, {diff[1]} at 2x."]
    return "\n".join(lines) + "\n"


def _row_check(rows: list[dict[str, Any]], methods: list[str], patterns: list[str], fractions: list[float]) -> list[str]:
    """Each method against the best interpolation baseline of every row (pattern and fraction, and nothing
    missing): on how many rows it is at least as good, and its worst row."""
    baselines = [m for m in INTERPOLATION_BASELINES if m in methods]
    if not baselines:
        return []
    cells = [(p, f) for p in patterns for f in fractions if f > 0] + [(patterns[0], 0.0)] * (0.0 in fractions)
    best = {c: max(np.nanmean(_grid(rows, m, "dice", [c[0]], [c[1]])) for m in baselines) for c in cells}
    lines = ["### Against the best interpolation baseline of each row (mean Dice, all voxels)", "",
             "| method | rows at least as good | worst row | difference there |", "|---|---|---|---|"]
    for m in methods:
        if m in baselines:
            continue
        diff = {c: np.nanmean(_grid(rows, m, "dice", [c[0]], [c[1]])) - best[c] for c in cells}
        worst = min(diff, key=diff.get)
        where = "nothing missing" if worst[1] == 0 else f"{worst[0]}, {worst[1]:.0%}"
        lines.append(f"| {METHODS[m].name} | {sum(d >= 0 for d in diff.values())} of {len(cells)} | {where} | "
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
            ax.plot([100 * f for f in fractions], means, marker="o", label=METHODS[m].name)
        ax.set_title(pattern)
        ax.set_xlabel("missing (%)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean foreground Dice")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(out / "dice_vs_missing.png", lambda p: fig.savefig(p, dpi=110), overwrite=True)
    plt.close(fig)
    print(summary)
