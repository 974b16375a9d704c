"""``pconv3d infer``: segment a volume or a folder of volumes with a trained checkpoint.

Outputs ``<name>_seg<ext>`` label maps (and ``<name>_prob<ext>`` probabilities with ``--probabilities``) with
the input's exact shape and affine, written atomically and never over an input. Under ``torchrun`` the
volumes of a folder are split across processes.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from monai.data import partition_dataset

from pconv3d.io.datalist import load_folder
from pconv3d.io.save import output_path
from pconv3d.transforms import InputRecipe
from pipelines.arguments import distance, positive_int
from pipelines.bundle import add_common_arguments, common_overrides, run_workflow
from pipelines import records
from pipelines.handlers import load_checkpoint
from pipelines.inputs import check_cases


OUTPUT_POSTFIXES = ("seg", "prob")  # the files inference.yaml writes per input


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="segment volumes with a trained checkpoint")
    add_common_arguments(p, "inference.yaml")
    p.add_argument("--model", required=True, help="checkpoint written by `pconv3d train` (best.pt or last.pt)")
    p.add_argument("--input", required=True, help="a volume file or a folder of volumes")
    p.add_argument("--plain-model", help="a second checkpoint, of a network given the image alone (recipe 'plain', "
                   "trained on complete volumes): it segments each volume whose holes reach at most --max-reach "
                   "voxels, --model the others")
    p.add_argument("--max-reach", type=distance, help="with --plain-model: the farthest a missing voxel may lie from "
                   "an acquired one for the plain network (default 0: complete volumes only)")
    p.add_argument("--mask", help="validity mask file for a single input volume (nonzero = valid; floating masks are weights in [0, 1])")
    p.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    p.add_argument("--amp", action="store_true", help="automatic mixed precision")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (config id compile)")
    p.add_argument("--sw-batch-size", type=positive_int, help="sliding-window batch size")
    p.set_defaults(func=run)


def input_datalist(input: str, mask: str | None = None) -> list[dict[str, str]]:
    """Datalist for a file (with an optional mask file) or a folder; this process's share under torchrun.

    In a folder, files named as this command's outputs of another volume there (``<name>_seg``, ``<name>_prob``
    beside ``<name>``) are earlier results, not inputs: they are skipped, with a note."""
    if input is None:
        raise ValueError("no input given: set `input` to a volume file or a folder")
    path = Path(input)
    if path.is_dir():
        if mask is not None:
            raise ValueError(f"--mask applies to a single input file; {path} is a folder (name masks <name>_mask.<ext>)")
        items = load_folder(path)
        earlier = {output_path(item["image"], path, post).name for item in items for post in OUTPUT_POSTFIXES}
        skipped = [item["image"] for item in items if Path(item["image"]).name in earlier]
        if skipped:
            print(f"skipping {len(skipped)} earlier output(s) in {path} ({', '.join(Path(f).name for f in skipped[:3])}"
                  f"{', ...' if len(skipped) > 3 else ''})", flush=True)
            items = [item for item in items if item["image"] not in skipped]
    elif path.is_file():
        items = [{"image": str(path.resolve()), **({"mask": str(Path(mask).resolve())} if mask else {})}]
    else:
        raise FileNotFoundError(f"{path}: no such file or folder")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        items = partition_dataset(items, num_partitions=world, shuffle=False, even_divisible=False)[dist.get_rank()]
    return items


def check_inference(
    datalist: list[dict[str, str]],
    output_dir: str,
    overwrite: bool,
    probabilities: bool,
    in_channels: int,
    mask_options: dict[str, Any] | None = None,
) -> None:
    """Before any volume is segmented: every case usable by the network (:func:`pipelines.inputs.check_cases`),
    no two inputs that would be written under one output name, no output that would land on an input file,
    and none that exists already unless ``overwrite``."""
    sources: dict[Path, str] = {}
    for item in datalist:
        out = output_path(item["image"], output_dir, OUTPUT_POSTFIXES[0]).resolve()
        if out in sources:
            raise ValueError(f"{sources[out]} and {item['image']} would both be segmented into {out}; give inputs "
                             "of distinct file names")
        sources[out] = item["image"]
    check_cases(datalist, in_channels, mask_options=mask_options)
    inputs = {Path(p).resolve() for item in datalist for p in item.values()}
    clashes = [str(out) for item in datalist for post in OUTPUT_POSTFIXES
               if (out := output_path(item["image"], output_dir, post)).resolve() in inputs]
    if clashes:
        raise ValueError(f"{', '.join(clashes)}: output would overwrite an input file; choose another output folder")
    written = OUTPUT_POSTFIXES if probabilities else OUTPUT_POSTFIXES[:1]
    existing = [out for item in datalist for post in written if (out := output_path(item["image"], output_dir, post)).exists()]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise ValueError(f"{existing[0]}{more} already exist(s) from an earlier run; pass --overwrite to replace "
                         "them, or choose another --output")


def checkpoint_overrides(model_path: str, extra: list[str]) -> dict[str, Any]:
    """Config overrides for a checkpoint: its path, the architecture it was trained with and its input recipe
    (:class:`pconv3d.transforms.InputRecipe`), where it records them and ``extra`` does not override them
    itself. A plain ``state_dict`` in a bundle's ``models/`` folder takes them from the bundle's config.

    Only those records reach the config, and only after :mod:`pipelines.records` checked them: a model file
    is data, never code."""
    ckpt = load_checkpoint(model_path)
    given = {key[2:].split("#")[0] for key in extra if key.startswith("--")}
    if ckpt.keys() == {"network"}:  # a plain state_dict: a bundle's own record, else the config decides
        recorded = records.bundle_record(model_path) if "network_def" not in given else {}
    else:
        network = records.network_def(ckpt, model_path) if "network_def" not in given else None
        recipe = records.input_recipe(ckpt, model_path)
        recorded = {"network_def": network, "recipe": recipe.name or recipe.as_dict()}
    return {"model_path": model_path, **{k: v for k, v in recorded.items() if v is not None and k not in given}}


def plain_model_overrides(model_path: str) -> dict[str, Any]:
    """Config overrides for the plain model beside the main one (``--plain-model``): its path, network and
    recipe, from its checked records (:func:`checkpoint_overrides`); an error if it records no network."""
    recorded = checkpoint_overrides(model_path, [])
    if "network_def" not in recorded:
        raise ValueError(f"{model_path}: the plain model records no network; give a checkpoint written by "
                         "`pconv3d train` (best.pt) or a bundle's models/model.pt")
    return {f"plain_{key}": value for key, value in recorded.items()}


def check_plain_model(recipe: InputRecipe, plain_recipe: Any, plain_network: torch.nn.Module, model_path: str) -> None:
    """Before any volume is segmented, with ``--plain-model``: the plain model takes the main recipe's image
    without the mask (:meth:`~pconv3d.transforms.InputRecipe.image_only`), so that it can be handed the same
    input with the mask left out; a model that records no recipe is taken to take that."""
    expected = recipe.image_only()
    got = expected if plain_recipe is None else InputRecipe.of(plain_recipe, f"{model_path}: input_recipe")
    if got != expected:
        raise ValueError(f"{model_path}: the plain model was trained on the recipe {got.label}; beside a model of "
                         f"the recipe {recipe.label} it must take {expected.label} (the same image, no mask)")
    expected.check_network(plain_network)


def run(args: argparse.Namespace) -> int:
    overrides = {**checkpoint_overrides(args.model, args.extra), "input": args.input, **common_overrides(args)}
    if args.plain_model:
        overrides.update(plain_model_overrides(args.plain_model))
    elif args.max_reach is not None:
        raise ValueError("--max-reach chooses between two models; give the second with --plain-model")
    optional = {"mask": args.mask, "sw_batch_size": args.sw_batch_size, "max_reach": args.max_reach}
    overrides.update({k: v for k, v in optional.items() if v is not None})
    for flag, key in ((args.probabilities, "save_probabilities"), (args.amp, "amp"), (args.compile, "compile")):
        if flag:
            overrides[key] = True
    run_workflow(args.config, overrides, args.extra)
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"predictions written to {Path(overrides.get('output_dir', 'outputs/predictions')).resolve()}")
    return 0
