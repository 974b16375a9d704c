"""``pconv3d run``: the main job, end to end on the default dataset, in a few minutes on a CPU.

1. write the default dataset (MNI152-derived brain volumes, no download) unless it is already there;
2. train a PartialUNet (``configs/train.yaml``), with simulated missing slices as augmentation;
3. make the test volumes lose slices (NaN-filled, as a scanner export with missing slices looks);
4. segment them with ``configs/inference.yaml`` (the mask is derived from the NaN voxels);
5. evaluate against the reference labels and print the per-class Dice table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from pconv3d.data import make_dataset
from pconv3d.io.datalist import DATASET_JSON, is_generated_dataset, load_datalist
from pconv3d.io.sitk import save_volume
from pconv3d.transforms.array import drop_slice_pattern
from pipelines import evaluate as evaluate_cmd
from pipelines.bundle import run_workflow
from pipelines.infer import checkpoint_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="main job: dataset, training, inference on volumes with missing slices, Dice")
    p.add_argument("--output", default="outputs", help="folder for everything the job writes (default: outputs)")
    p.add_argument("--kind", default="mni", choices=["mni", "phantom"], help="dataset (default: mni)")
    p.add_argument("--epochs", type=int, default=250, help="training epochs (default: 250, about 3.5 min on 2 cores)")
    p.add_argument("--missing", type=float, default=0.33, help="fraction of test slices removed (default: 0.33)")
    p.add_argument("--pattern", default="regular", choices=["regular", "random", "block"], help="which slices go")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def drop_slices_to_nan(image: str, output: Path, fraction: float, pattern: str, seed: int, axis: int = 2) -> Path:
    """Copy ``image`` to ``output`` with ``fraction`` of its slices along ``axis`` set to NaN."""
    img = nib.load(image)
    data = np.asarray(img.dataobj, dtype=np.float32)
    keep = drop_slice_pattern(data.shape[axis], fraction, pattern, np.random.RandomState(seed))
    data[(slice(None),) * axis + (~keep,)] = np.nan
    return save_volume(data, img.affine, output, overwrite=True)


def _step(n: int, text: str) -> float:
    print(f"\n[{n}/5] {text}", flush=True)
    return time.perf_counter()


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    start = time.perf_counter()
    data_dir = out / "data"
    t = _step(1, f"dataset ({args.kind}) in {data_dir}")
    if not is_generated_dataset(data_dir):
        make_dataset(args.kind, data_dir, seed=args.seed)
    print(f"    ready in {time.perf_counter() - t:.1f} s")

    t = _step(2, f"training a PartialUNet for {args.epochs} epochs")
    train_dir = out / "train"
    run_workflow(["train.yaml"], {"dataset_dir": str(data_dir), "output_dir": str(train_dir), "epochs": args.epochs,
                                  "seed": args.seed, "resume": False}, [])
    print(f"    trained in {time.perf_counter() - t:.0f} s; checkpoints and metrics in {train_dir}")

    t = _step(3, f"test volumes with {args.missing:.0%} of slices missing ({args.pattern})")
    missing_dir = out / "test_missing_slices"
    tests = load_datalist(data_dir / DATASET_JSON, "test")
    for i, item in enumerate(tests):
        drop_slices_to_nan(item["image"], missing_dir / Path(item["image"]).name, args.missing, args.pattern, args.seed + i)
    print(f"    {len(tests)} volumes in {missing_dir}")

    t = _step(4, "sliding-window inference (mask derived from NaN voxels)")
    pred_dir = out / "predictions"
    model = str(train_dir / "best.pt")
    run_workflow(["inference.yaml"], {**checkpoint_overrides(model, []), "input": str(missing_dir),
                                      "output_dir": str(pred_dir), "overwrite": True}, [])
    print(f"    label maps in {pred_dir} ({time.perf_counter() - t:.0f} s)")

    _step(5, "evaluation against the reference labels")
    labels = str(data_dir / DATASET_JSON)
    pairs = evaluate_cmd.pair_cases(str(pred_dir), labels)
    rows, summary = evaluate_cmd.evaluate(pairs, evaluate_cmd.class_names_for(labels, None, pairs))
    evaluate_cmd.write_results(pred_dir, rows, summary, overwrite=True)
    print(evaluate_cmd.format_table(summary))
    print(f"\ndone in {time.perf_counter() - start:.0f} s. per-case metrics: {pred_dir / 'metrics.csv'}; "
          f"training log: {train_dir / 'metrics.csv'}; model: {train_dir / 'best.pt'}")
    return 0
