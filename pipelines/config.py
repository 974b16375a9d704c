"""Bundle configs for the command line: loading, ``--key value`` overrides, and checks with clear errors.

Overrides use MONAI bundle ids (``--trainer#max_epochs 2`` or a top-level ``--epochs 2``), and values are
read as YAML (``2`` is an int, ``[32,32,32]`` a list, ``true`` a bool), as ``monai.bundle run`` does.
An id that no config defines is refused with the list of ids that could have been meant.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from monai.bundle import ConfigParser

from pipelines.errors import CLIError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def config_path(name: str) -> str:
    """A config given by path, or by file name inside the project's ``configs/`` folder."""
    path = Path(name)
    if not path.exists() and (CONFIG_DIR / name).exists():
        path = CONFIG_DIR / name
    if not path.is_file():
        raise CLIError(f"config file not found: {name}")
    return str(path)


def parse_overrides(extra: Sequence[str]) -> dict[str, Any]:
    """``["--a#b", "2", "--c", "x"]`` -> ``{"a#b": 2, "c": "x"}``."""
    out: dict[str, Any] = {}
    items = list(extra)
    while items:
        key = items.pop(0)
        if not key.startswith("--") or len(key) < 3:
            raise CLIError(f"unexpected argument {key!r}: overrides are given as --id value (e.g. --epochs 2)")
        if not items or items[0].startswith("--"):
            raise CLIError(f"override {key} needs a value")
        out[key[2:].replace(".", "#")] = yaml.safe_load(items.pop(0))
    return out


def _siblings(parser: ConfigParser, key: str) -> list[str]:
    parent = key.rpartition("#")[0]
    node = parser[parent] if parent else parser.get()
    if isinstance(node, dict):
        return sorted(f"{parent}#{k}" if parent else k for k in node if not str(k).startswith("_"))
    if isinstance(node, list):
        return [f"{parent}#{i}" for i in range(len(node))]
    return []


def load_config(files: Sequence[str], overrides: dict[str, Any]) -> ConfigParser:
    """Read and merge ``files``, check every override id exists, and apply the overrides."""
    parser = ConfigParser()
    try:
        parser.read_config([config_path(f) for f in files])
    except (yaml.YAMLError, ValueError) as e:
        raise CLIError(f"cannot read config {', '.join(files)}: {e}") from None
    for key, value in overrides.items():
        if key not in parser:
            parent = key.rpartition("#")[0]
            valid = _siblings(parser, key) if not parent or parent in parser else _siblings(parser, key.partition("#")[0])
            raise CLIError(f"unknown config key {key!r}; valid keys here: {', '.join(valid)}")
        parser[key] = value
    return parser
