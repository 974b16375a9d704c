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
from monai.bundle import ConfigParser
from monai.data import partition_dataset

from pconv3d.io.datalist import load_folder, validate_case
from pconv3d.io.save import output_path
from pipelines.bundle import add_common_arguments, run_workflow
from pipelines.handlers import load_checkpoint


OUTPUT_POSTFIXES = ("seg", "prob")  # the files inference.yaml writes per input


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="segment volumes with a trained checkpoint")
    add_common_arguments(p, "inference.yaml")
    p.add_argument("--model", required=True, help="checkpoint written by `pconv3d train` (best.pt or last.pt)")
    p.add_argument("--input", required=True, help="a volume file or a folder of volumes")
    p.add_argument("--mask", help="validity mask file for a single input volume (1 = valid)")
    p.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    p.add_argument("--amp", action="store_true", help="automatic mixed precision")
    p.add_argument("--sw-batch-size", type=int, help="sliding-window batch size")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (inputs are never replaced)")
    p.set_defaults(func=run)


def input_datalist(input: str, mask: str | None = None, output_dir: str | None = None) -> list[dict[str, str]]:
    """Datalist for a file (with an optional mask file) or a folder; this process's share under torchrun.

    Every file is checked before anything is written: readable, 3D, masks on their image's grid, and no
    output in ``output_dir`` that would land on an input file."""
    if input is None:
        raise ValueError("no input given: set `input` to a volume file or a folder")
    path = Path(input)
    if path.is_dir():
        if mask is not None:
            raise ValueError(f"--mask applies to a single input file; {path} is a folder (name masks <name>_mask.<ext>)")
        items = load_folder(path)
    elif path.is_file():
        items = [{"image": str(path.resolve()), **({"mask": str(Path(mask).resolve())} if mask else {})}]
    else:
        raise FileNotFoundError(f"{path}: no such file or folder")
    for item in items:
        validate_case(item)
    if output_dir is not None:
        inputs = {Path(p).resolve() for item in items for p in item.values()}
        clashes = [str(out) for item in items for post in OUTPUT_POSTFIXES
                   if (out := output_path(item["image"], output_dir, post)).resolve() in inputs]
        if clashes:
            raise ValueError(f"{', '.join(clashes)}: output would overwrite an input file; choose another output folder")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        items = partition_dataset(items, num_partitions=world, shuffle=False, even_divisible=False)[dist.get_rank()]
    return items


def load_network(network: torch.nn.Module, path: str) -> torch.nn.Module:
    """Load ``path``'s weights into ``network`` strictly; a clear error when the architectures differ."""
    state = load_checkpoint(path)["network"]
    missing, unexpected, shapes = network.state_dict().keys() - state.keys(), state.keys() - network.state_dict().keys(), []
    if not missing and not unexpected:
        own = network.state_dict()
        shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        details = "; ".join(filter(None, [
            f"missing {sorted(missing)[:3]}" if missing else "",
            f"unexpected {sorted(unexpected)[:3]}" if unexpected else "",
            f"shapes differ ({', '.join(shapes[:3])})" if shapes else "",
        ]))
        raise ValueError(f"{path} holds weights of another architecture than {type(network).__name__} "
                         f"as configured: {details}")
    network.load_state_dict(state)
    return network.eval()


def network_from_checkpoint(path: str | Path) -> torch.nn.Module:
    """The network a checkpoint records (its ``network_def``), with the checkpoint's weights, in eval mode."""
    network_def = load_checkpoint(path).get("network_def")
    if not network_def:
        raise ValueError(f"{path} records no network_def; build the network from a config and use load_network")
    return load_network(ConfigParser({"network_def": network_def}).get_parsed_content("network_def"), str(path))


def checkpoint_overrides(model_path: str, extra: list[str]) -> dict[str, Any]:
    """Config overrides for a checkpoint: its path, and the architecture it was trained with when it records
    one and ``extra`` does not override ``network_def`` itself."""
    ckpt = load_checkpoint(model_path)
    overrides: dict[str, Any] = {"model_path": model_path}
    if ckpt.get("network_def") and not any(k.startswith("--network_def") for k in extra):
        overrides["network_def"] = ckpt["network_def"]
    return overrides


def run(args: argparse.Namespace) -> int:
    overrides = {**checkpoint_overrides(args.model, args.extra), "input": args.input}
    optional = {"mask": args.mask, "output_dir": args.output, "sw_batch_size": args.sw_batch_size}
    overrides.update({k: v for k, v in optional.items() if v is not None})
    if args.device:
        overrides["device"] = f"$torch.device('{args.device}')"
    for flag, key in ((args.probabilities, "save_probabilities"), (args.amp, "amp"), (args.overwrite, "overwrite")):
        if flag:
            overrides[key] = True
    run_workflow(args.config, overrides, args.extra)
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"predictions written to {Path(overrides.get('output_dir', 'outputs/predictions')).resolve()}")
    return 0
