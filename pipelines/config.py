"""Bundle configs for the command line: loading, ``--key value`` overrides, and checks with clear errors.

Overrides use MONAI bundle ids (``--trainer#max_epochs 2`` or a top-level ``--epochs 2``), and values are
read as YAML (``2`` is an int, ``[32,32,32]`` a list, ``true`` a bool), as ``monai.bundle run`` does.
An id that no config defines is refused with the list of ids that could have been meant; a new argument of the
network (``--network_def#gate_channels 1``) is refused unless the config's network class takes it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from pydoc import locate
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
        text = items.pop(0)
        try:
            out[key[2:].replace(".", "#")] = yaml.safe_load(text)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or type(e).__name__
            raise CLIError(f"{key}: cannot read {text!r} as a YAML value ({problem})") from None
    return out


def _is_expression(value: Any) -> bool:
    """Config strings that MONAI evaluates or resolves (``$expr``, ``@ref``, ``%macro``): any type may result."""
    return isinstance(value, str) and value[:1] in ("$", "@", "%")


def _type_problem(old: Any, new: Any) -> str | None:
    """What is wrong with overriding the config value ``old`` by ``new``, or ``None``: numbers, booleans and lists
    must stay numbers, booleans and lists (an expression may stand for anything)."""
    if _is_expression(old) or _is_expression(new) or old is None:
        return None
    if isinstance(old, bool):
        return None if isinstance(new, bool) else "true or false"
    if isinstance(old, (int, float)):
        return None if isinstance(new, (int, float)) and not isinstance(new, bool) else "a number"
    if isinstance(old, list):
        return None if isinstance(new, list) else "a list like [32, 32, 32]"
    return None


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
    paths = [config_path(f) for f in files]
    for path in paths:
        try:
            content = ConfigParser.load_config_file(path)
        except (yaml.YAMLError, ValueError) as e:
            raise CLIError(f"cannot read config {path}: {' '.join(str(e).split())}") from None
        if not isinstance(content, dict):
            raise CLIError(f"config {path} must be a mapping of ids to values, got {type(content).__name__}")
    parser.read_config(paths)
    new_arguments = []  # of the network: checked against its constructor once the configs' imports have run
    for key, value in overrides.items():
        if key not in parser and key.rpartition("#")[0] == "network_def" and isinstance(parser.get("network_def"), dict):
            new_arguments.append(key.rpartition("#")[2])
        elif key not in parser:
            parent = key.rpartition("#")[0]
            valid = _siblings(parser, key) if not parent or parent in parser else _siblings(parser, key.partition("#")[0])
            raise CLIError(f"unknown config key {key!r}; valid keys here: {', '.join(valid)}")
        expected = _type_problem(parser[key], value) if key in parser else None
        if expected:
            raise CLIError(f"--{key}: expected {expected} (like the config's {parser[key]!r}), got {value!r}")
        parser[key] = value
    if "imports" in parser:  # what the configs' expressions name, as a workflow imports it before it reads them
        parser.get_parsed_content("imports")
    if new_arguments:
        _check_network_arguments(parser, new_arguments)
    return parser


def _check_network_arguments(parser: ConfigParser, names: list[str]) -> None:
    """Refuse, in one line, an argument that the config's network class does not take (by name, in the
    constructors of the class and its bases, as far as they name their arguments)."""
    target = parser.get_parsed_content("network_def#_target_")
    cls = locate(target) if isinstance(target, str) else target
    accepted: set[str] = set()
    for klass in getattr(cls, "__mro__", ()):
        if "__init__" in vars(klass):
            accepted |= {p.name for p in inspect.signature(klass.__init__).parameters.values()
                         if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
    for name in names:
        if name not in accepted:
            raise CLIError(f"--network_def#{name}: {getattr(cls, '__name__', target)} takes no argument {name!r}; "
                           f"it takes: {', '.join(sorted(accepted))}")
