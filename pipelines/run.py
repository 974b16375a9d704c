"""``pconv3d run``: the main job, end to end on the default dataset, in about 4 minutes on a 2-core CPU.

1. write the default dataset (MNI152-derived brain volumes, no download);
2. train the default network (``configs/train.yaml``: a GatedUNet on interpolated input with a confidence
   channel), with simulated missing slices and regions as augmentation;
3. make the test volumes lose slices (NaN-filled, as a scanner export with missing slices looks);
4. segment them with ``configs/inference.yaml`` (the mask is derived from the NaN voxels);
5. evaluate against the reference labels and print the per-class Dice table.

The settings are recorded in ``OUTPUT/run.json``. Typed again with the same settings, the command reuses the
dataset and a complete training (continues an interrupted one) and redoes steps 3-5; an output folder that
holds a run with other settings, or another dataset, is refused unless ``--overwrite`` is given, so two runs
never mix in one folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from pconv3d.data import make_dataset
from pconv3d.io.datalist import DATASET_JSON, generated_dataset_settings, load_datalist
from pconv3d.io.sitk import atomic_write, save_volume
from pconv3d.transforms.holes import drop_slice_pattern
from pipelines import evaluate as evaluate_cmd
from pipelines.arguments import fraction, positive_int
from pipelines.bundle import run_workflow
from pipelines.config import load_config, parse_overrides
from pipelines.errors import CLIError
from pipelines.handlers import BEST
from pipelines.infer import checkpoint_overrides
from pipelines.outputs import check_writable, completed_epochs, removed_if_failed, training_state


SETTINGS = "run.json"  # what the run in an output folder was asked for: the key to reusing its parts
DATASET = {"n_train": 8, "n_test": 4, "size": 48}  # make_dataset's defaults, the main job's dataset
PARTS = ("train", "test_missing_slices", "predictions")  # made by this command alone, from the settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="main job: dataset, training, inference on volumes with missing slices, Dice",
                       epilog="Typed again with the same settings, it reuses the complete dataset and training and "
                              "redoes the rest; other settings into the same --output need --overwrite. Training "
                              "config ids can be overridden with --id value, e.g. --patch_size [16,16,16].")
    p.add_argument("--output", default="outputs", help="folder for everything the job writes (default: outputs)")
    p.add_argument("--kind", default="mni", choices=["mni", "phantom"], help="dataset (default: mni)")
    p.add_argument("--epochs", type=positive_int, default=250, help="training epochs (default: 250, about 3.5 min of the job's 4 on 2 cores)")
    p.add_argument("--missing", type=fraction, default=0.33, help="fraction of test slices removed, in [0, 1) (default: 0.33)")
    p.add_argument("--pattern", default="regular", choices=["regular", "random", "block"], help="which slices go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run with other settings in --output")
    p.set_defaults(func=run, extra=[])


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


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"kind": args.kind, "epochs": args.epochs, "missing": args.missing, "pattern": args.pattern,
            "seed": args.seed, "overrides": list(args.extra)}


def _differences(previous: dict[str, Any] | None, settings: dict[str, Any]) -> str:
    if previous is None:
        return "made without a record of its settings"
    return ", ".join(f"{k} {previous.get(k)!r} -> {v!r}" for k, v in settings.items() if previous.get(k) != v)


def _plan(out: Path, settings: dict[str, Any], overwrite: bool) -> dict[str, bool]:
    """Which parts of an earlier run in ``out`` are reused (``True``) or made anew; a :class:`CLIError` when an
    earlier run with other settings is there and ``overwrite`` is not given. Nothing is changed yet."""
    try:
        previous = json.loads((out / SETTINGS).read_text())
    except (OSError, ValueError):
        previous = None
    same = previous == settings
    data = out / "data"
    wanted = {"kind": settings["kind"], "seed": settings["seed"], **DATASET}
    found = generated_dataset_settings(data)
    reuse = {"data": found is not None and all(found.get(k) == v for k, v in wanted.items())}
    conflicts = [] if reuse["data"] or not _holds_files(data) else [
        f"{data} holds another dataset ({found and found.get('kind')}, seed {found and found.get('seed')})"]
    for part in PARTS:
        reuse[part] = same and _holds_files(out / part)
        if _holds_files(out / part) and not same:
            conflicts.append(f"{out / part} holds an earlier run's results ({_differences(previous, settings)})")
    if conflicts and not overwrite:
        raise CLIError(f"{'; '.join(conflicts)}; choose another --output or pass --overwrite to replace them")
    return reuse


def _holds_files(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    start = time.perf_counter()
    settings = _settings(args)
    train_overrides = {"output_dir": str(out / "train"), "epochs": args.epochs, "seed": args.seed}
    config = load_config(["train.yaml"], {**train_overrides, **parse_overrides(args.extra)})  # bad overrides: refused now
    args.network = str(config.get_parsed_content("network_def#_target_")).rsplit(".", 1)[-1]
    check_writable(out)
    reuse = _plan(out, settings, args.overwrite)
    with removed_if_failed(out):
        for part in PARTS:
            if not reuse[part] and (out / part).exists():
                shutil.rmtree(out / part)  # an earlier run's, with other settings: --overwrite was given
        atomic_write(out / SETTINGS, lambda p: p.write_text(json.dumps(settings, indent=1)), overwrite=True)
        return _run_parts(args, out, reuse, train_overrides, start)


def _run_parts(args: argparse.Namespace, out: Path, reuse: dict[str, bool], train_overrides: dict, start: float) -> int:
    data_dir = out / "data"
    t = _step(1, f"dataset ({args.kind}) in {data_dir}")
    if reuse["data"]:
        print("    reusing the dataset there (same kind and seed)")
    else:
        make_dataset(args.kind, data_dir, seed=args.seed, overwrite=args.overwrite, **DATASET)
    print(f"    ready in {time.perf_counter() - t:.1f} s")

    train_dir = out / "train"
    state = training_state(train_dir, args.epochs) if reuse["train"] else "none"
    if state == "complete":
        _step(2, f"training: reusing the complete {args.epochs}-epoch training in {train_dir} (same settings; "
                 "--overwrite trains again)")
    else:
        resume = state == "interrupted"
        t = _step(2, f"training a {args.network} for {args.epochs} epochs"
                     + (f", continuing after epoch {completed_epochs(train_dir)}" if resume else ""))
        run_workflow(["train.yaml"], {"dataset_dir": str(data_dir), **train_overrides, "resume": resume,
                                      "overwrite": not resume}, args.extra)
        print(f"    trained in {time.perf_counter() - t:.0f} s; checkpoints and metrics in {train_dir}")

    t = _step(3, f"test volumes with {args.missing:.0%} of slices missing ({args.pattern})")
    missing_dir = out / "test_missing_slices"
    tests = load_datalist(data_dir / DATASET_JSON, "test")
    for i, item in enumerate(tests):
        drop_slices_to_nan(item["image"], missing_dir / Path(item["image"]).name, args.missing, args.pattern, args.seed + i)
    print(f"    {len(tests)} volumes in {missing_dir}")

    t = _step(4, "sliding-window inference (mask derived from NaN voxels)")
    pred_dir = out / "predictions"
    model = str(train_dir / BEST)
    run_workflow(["inference.yaml"], {**checkpoint_overrides(model, []), "input": str(missing_dir),
                                      "output_dir": str(pred_dir), "overwrite": True}, [])
    print(f"    label maps in {pred_dir} ({time.perf_counter() - t:.0f} s)")

    _step(5, "evaluation against the reference labels")
    labels = str(data_dir / DATASET_JSON)
    pairs = evaluate_cmd.pair_cases(str(pred_dir), labels)
    names = evaluate_cmd.class_names_for(labels, None, pairs)
    cases, scores = evaluate_cmd.evaluate(pairs, names)
    evaluate_cmd.write_results(pred_dir, cases, names, scores, overwrite=True)
    print(evaluate_cmd.format_table(scores, names))
    print(f"\ndone in {time.perf_counter() - start:.0f} s. per-case metrics: {pred_dir / 'dice_raw.csv'}; "
          f"training log: {train_dir / 'metrics.csv'}; model: {train_dir / BEST}")
    return 0
