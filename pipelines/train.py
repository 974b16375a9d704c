"""``pconv3d train``: train a network from a bundle config (default ``configs/train.yaml``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pconv3d.io.datalist import DATASET_JSON, load_datalist
from pconv3d.transforms import RECIPES
from pipelines.arguments import positive_int
from pipelines.bundle import add_common_arguments, common_overrides, run_workflow
from pipelines.config import parse_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train from a bundle config")
    add_common_arguments(p, "train.yaml")
    p.add_argument("--data", help="dataset folder with dataset.json (config id dataset_dir)")
    p.add_argument("--epochs", type=positive_int, help="number of epochs (config id epochs)")
    p.add_argument("--seed", type=int, help="random seed (config id seed)")
    p.add_argument("--recipe", help=f"what the network is given, and the network made for it: {', '.join(RECIPES)} "
                                    "(default: gated), or a mapping {mask_input, fill, mask_as_channel} (config id recipe)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUTPUT from its last.pt (more --epochs stretch its learning-rate schedule)")
    p.add_argument("--amp", action="store_true", help="automatic mixed precision")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (config id compile)")
    p.add_argument("--init-from", metavar="CKPT",
                   help="start from these weights: a MONAI model-zoo model.pt, a MONAI UNet/DynUNet/BasicUNet "
                        "state_dict or a pconv3d checkpoint, loaded strictly into the configured network (config id init_from)")
    p.set_defaults(func=run)


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides of ``pconv3d train``'s own arguments (``--id value`` pairs aside)."""
    overrides = {"dataset_dir": args.data, "epochs": args.epochs, "seed": args.seed, "init_from": args.init_from}
    overrides = {**{k: v for k, v in overrides.items() if v is not None}, **common_overrides(args)}
    if args.recipe is not None:  # read as YAML, as any --id value: a name or a mapping
        overrides.update(parse_overrides(["--recipe", args.recipe]))
    if args.resume:
        overrides["resume"] = True
    for flag, key in ((args.amp, "amp"), (args.compile, "compile")):
        if flag:
            overrides[key] = True
    return overrides


def run(args: argparse.Namespace) -> int:
    run_workflow(args.config, train_overrides(args), args.extra)
    return 0


LABELLED = ("image", "label")  # what every training and validation case gives


def datalist_split(dataset_dir: str, part: str, num_val: int = 2) -> list[dict]:
    """``part`` ("training" or "validation") of ``dataset_dir/dataset.json``: its own ``validation`` list when
    it has one, else the last ``num_val`` training cases held out (they are then not trained on)."""
    path = Path(dataset_dir) / DATASET_JSON
    training = load_datalist(path, "training", required=LABELLED)
    try:
        validation = load_datalist(path, "validation", required=LABELLED)
    except ValueError as e:  # no validation list in the file
        if "no 'validation' list" not in str(e):
            raise
        if len(training) <= num_val:
            raise ValueError(f"{path}: {len(training)} training cases leave none to train on after holding "
                             f"out {num_val} for validation; add a 'validation' list or more cases") from None
        training, validation = training[:-num_val], training[-num_val:]
    return training if part == "training" else validation
