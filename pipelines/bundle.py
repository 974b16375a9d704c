"""Running a bundle config from the command line the way ``python -m monai.bundle run`` does, with clear errors."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.bundle import create_workflow

from pipelines.errors import CLIError
from pipelines.config import config_path, load_config, parse_overrides

USER_ERRORS = (FileNotFoundError, ValueError, KeyError, PermissionError, IsADirectoryError, NotADirectoryError)


def add_common_arguments(p: argparse.ArgumentParser, default_config: str) -> None:
    p.add_argument("--config", nargs="+", default=[default_config], help="bundle config file(s), merged in order")
    p.add_argument("--output", help="output folder (config id output_dir)")
    p.add_argument("--seed", type=int, help="random seed (config id seed)")
    p.set_defaults(extra=[])
    p.epilog = "Any config id can be overridden with --id value, e.g. --epochs 2 or --trainer#amp true."


def root_cause(e: BaseException) -> BaseException:
    """The innermost cause: MONAI wraps failures of config components in RuntimeErrors."""
    while (e.__cause__ or e.__context__) is not None and isinstance(e, RuntimeError):
        e = e.__cause__ or e.__context__
    return e


def check_writable(folder: str | os.PathLike) -> None:
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise CLIError(f"output folder {folder} is not writable ({e.strerror})") from None


def run_workflow(configs: Sequence[str], overrides: dict[str, Any], extra: Sequence[str]) -> None:
    """Check ``overrides`` + ``--id value`` pairs in ``extra`` against ``configs``, then run the workflow."""
    overrides = {**overrides, **parse_overrides(extra)}
    parser = load_config(configs, overrides)
    if "network_snapshot" in parser and "network_def" in parser:
        snapshot = parser.get_parsed_content("network_def", instantiate=False).get_config()
        overrides["network_snapshot"] = json.dumps(snapshot)
    if "output_dir" in parser:
        check_writable(parser.get_parsed_content("output_dir"))
    files = [config_path(c) for c in configs]
    workflow = create_workflow(config_file=files, meta_file=str(Path(files[0]).parent / "metadata.json"), **overrides)
    try:
        workflow.run()
        workflow.finalize()
    except CLIError:
        raise
    except Exception as e:
        cause = root_cause(e)
        if isinstance(cause, USER_ERRORS):
            raise CLIError(str(cause)) from None
        raise
