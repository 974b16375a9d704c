"""The missing-data robustness study: what partial convolution buys over a plain U-Net, in Dice.

Three methods trained with the same config, budget and seed on the default dataset:

* ``PartialUNet + mask``: the mask is given to the network (``configs/train.yaml`` as it is);
* ``UNet, zero-filled``: MONAI's ``UNet`` with the same arguments, holes set to 0 (no mask input);
* ``UNet, interpolated``: the same ``UNet`` with missing slices linearly interpolated from their neighbours.

Each is evaluated on the test cases with 0, 25, 50 and 75 % of the slices removed along the last axis,
``random``, ``regular`` (every k-th) and ``block`` (one contiguous slab) patterns, drawn identically for
every method. Writes
``results.csv``, ``results.md`` and ``dice_vs_missing.png`` to the output folder.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.inferers import sliding_window_inference

from pconv3d.data import make_dataset
from pconv3d.io.datalist import DATASET_JSON, is_generated_dataset, load_datalist
from pconv3d.io.sitk import atomic_write
from pconv3d.transforms.recipes import infer_transforms
from pipelines.bundle import run_workflow
from pipelines.config import config_path
from pipelines.evaluation import score_case
from pipelines.handlers import BEST, LAST, network_from_checkpoint
from pipelines.outputs import completed_epochs

FRACTIONS = (0.0, 0.25, 0.5, 0.75)
PATTERNS = ("random", "regular", "block")
SLICE_AXIS = 2
METHODS: dict[str, dict[str, Any]] = {
    "PartialUNet + mask": {"slug": "partial_unet", "mask": True, "interpolate": None},
    "UNet, zero-filled": {"slug": "unet_zero_filled", "mask": False, "interpolate": None},
    "UNet, interpolated": {"slug": "unet_interpolated", "mask": False, "interpolate": SLICE_AXIS},
}


def _overrides(method: dict[str, Any]) -> dict[str, Any]:
    """Config overrides that turn ``configs/train.yaml`` into the method's training."""
    if method["mask"]:
        return {}
    network = ConfigParser.load_config_file(config_path("train.yaml"))["network_def"]
    return {"network_def": {**network, "_target_": "monai.networks.nets.UNet"},
            "prepare_batch": {"_target_": "monai.engines.PrepareBatchDefault"},
            "interpolate_slices": method["interpolate"]}


@torch.no_grad()
def evaluate_method(network: torch.nn.Module, method: dict[str, Any], cases: list[dict], fraction: float,
                    pattern: str, num_classes: int, roi: list[int]) -> np.ndarray:
    """Dice per case (rows) and foreground class (columns)."""
    drop = {"fraction": fraction, "pattern": pattern, "axis": SLICE_AXIS, "seed": 0} if fraction > 0 else None
    transform = infer_transforms(drop_slices=drop, interpolate_slices=method["interpolate"])
    scores = []
    for case in cases:
        d = transform(case)
        x, m = d["image"][None].as_tensor(), d["mask"][None].as_tensor()
        kwargs = {"condition": m} if method["mask"] else {}
        logits = sliding_window_inference(x, roi, 4, network, overlap=0.25, **kwargs)
        scores.append(score_case(logits[0].argmax(0), d["label"][0].as_tensor(), num_classes)["dice"])
    return np.stack(scores)


def run_study(output: str | Path = "outputs/study", epochs: int = 250, seed: int = 0, n_test: int = 8) -> list[dict]:
    out = Path(output)
    data = out / "data"
    if not is_generated_dataset(data):
        make_dataset("mni", data, n_train=8, n_test=n_test, seed=seed)
    cases = load_datalist(data / DATASET_JSON, "test")
    header = ConfigParser.load_config_file(data / DATASET_JSON)
    classes = [header["labels"][k] for k in sorted(header["labels"], key=int)]
    train_cfg = ConfigParser.load_config_file(config_path("train.yaml"))
    rows: list[dict] = []
    for name, method in METHODS.items():
        run_dir = out / method["slug"]
        t = time.perf_counter()
        if completed_epochs(run_dir) < epochs or not (run_dir / BEST).exists():  # else reuse the complete training
            resume = (run_dir / LAST).is_file()  # an interrupted study continues where it stopped
            run_workflow(["train.yaml"], {"dataset_dir": str(data), "output_dir": str(run_dir), "epochs": epochs,
                                          "seed": seed, "progress": False, "resume": resume, "overwrite": not resume,
                                          **_overrides(method)}, [])
        print(f"{name}: trained in {time.perf_counter() - t:.0f} s", flush=True)
        network = network_from_checkpoint(run_dir / BEST)
        for pattern in PATTERNS:
            for fraction in FRACTIONS:
                dice = evaluate_method(network, method, cases, fraction, pattern, len(classes), train_cfg["patch_size"])
                for c, cls in enumerate(classes[1:]):
                    rows.append({"method": name, "pattern": pattern, "missing": fraction, "class": cls,
                                 "dice": float(np.nanmean(dice[:, c])), "dice_sd": float(np.nanstd(dice[:, c]))})
                mean = float(np.nanmean(dice))
                rows.append({"method": name, "pattern": pattern, "missing": fraction, "class": "mean",
                             "dice": mean, "dice_sd": float(np.nanstd(np.nanmean(dice, 1)))})
                print(f"  {pattern:8s} {fraction:.0%} missing: mean Dice {mean:.3f}", flush=True)
    write_outputs(out, rows)
    return rows


def markdown_table(rows: list[dict]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| pattern | missing | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for pattern in PATTERNS:
        for fraction in FRACTIONS:
            cells = []
            for m in methods:
                r = next(r for r in rows if (r["method"], r["pattern"], r["missing"], r["class"]) == (m, pattern, fraction, "mean"))
                cells.append(f"{r['dice']:.3f} ± {r['dice_sd']:.3f}")
            lines.append(f"| {pattern} | {fraction:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(out: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text = io.StringIO()
    writer = csv.DictWriter(text, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "results.csv", lambda p: p.write_text(text.getvalue()), overwrite=True)
    table = markdown_table(rows)
    atomic_write(out / "results.md", lambda p: p.write_text(
        "Mean foreground Dice (± sd over test cases) by fraction of slices missing\n\n" + table + "\n"), overwrite=True)
    fig, axes = plt.subplots(1, len(PATTERNS), figsize=(5 * len(PATTERNS), 3.8), sharey=True)
    for ax, pattern in zip(axes, PATTERNS):
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = [(r["missing"], r["dice"]) for r in rows if (r["method"], r["pattern"], r["class"]) == (method, pattern, "mean")]
            ax.plot([100 * p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_title(f"{pattern} slices missing")
        ax.set_xlabel("slices missing (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean foreground Dice")
    axes[0].legend()
    fig.tight_layout()
    atomic_write(out / "dice_vs_missing.png", lambda p: fig.savefig(p, dpi=110), overwrite=True)
    plt.close(fig)
    print(table)
    print(f"results in {out.resolve()}: results.csv, results.md, dice_vs_missing.png")
