"""Running a bundle config from the command line the way ``python -m monai.bundle run`` does, with clear errors."""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.bundle import create_workflow

from pipelines.arguments import device
from pipelines.config import config_path, load_config, parse_overrides
from pipelines.outputs import check_writable, removed_if_failed, training_locks_released


def add_common_arguments(p: argparse.ArgumentParser, default_config: str) -> None:
    p.add_argument("--config", nargs="+", default=[default_config], help="bundle config file(s), merged in order")
    p.add_argument("--output", help="output folder (config id output_dir)")
    p.add_argument("--device", type=device, help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's outputs (inputs are never replaced)")
    p.set_defaults(extra=[])
    p.epilog = "Any config id can be overridden with --id value, e.g. --epochs 2 or --trainer#amp true."


def common_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides for the arguments of :func:`add_common_arguments` that were given."""
    given = {"output_dir": args.output, "device": args.device}
    overrides = {k: v for k, v in given.items() if v is not None}
    if args.overwrite:
        overrides["overwrite"] = True
    return overrides


def run_workflow(configs: Sequence[str], overrides: dict[str, Any], extra: Sequence[str]) -> None:
    """Check ``overrides`` + ``--id value`` pairs in ``extra`` against ``configs``, then run the workflow.

    The config's ``initialize`` expressions (its input and output checks) run before any long work; an output
    folder this call creates is removed again if the run fails before writing anything into it. The training
    folder locks the run takes (:func:`pipelines.outputs.lock_training_output`) are released when it ends.
    """
    overrides = {**overrides, **parse_overrides(extra)}
    parser = load_config(configs, overrides)
    if "network_snapshot" in parser and "network_def" in parser:
        snapshot = parser.get_parsed_content("network_def", instantiate=False).get_config()
        overrides["network_snapshot"] = json.dumps(snapshot)
    output_dir = parser.get_parsed_content("output_dir") if "output_dir" in parser else None
    if output_dir is not None:
        check_writable(output_dir)
    files = [config_path(c) for c in configs]
    # locks released before a failed run's empty folders are removed: their files go with them
    with removed_if_failed(output_dir), training_locks_released(), warnings.catch_warnings():
        # the configs are ours or the user's own: MONAI's warning about untrusted configs is not for them
        warnings.filterwarnings("ignore", message=".*is resolved to an importable callable.*")
        workflow = create_workflow(config_file=files, meta_file=str(Path(files[0]).parent / "metadata.json"), **overrides)
        workflow.run()
        workflow.finalize()
