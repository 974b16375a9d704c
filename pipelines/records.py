"""What a model file records about its network, read as untrusted data and checked before any config sees it.

A checkpoint (``best.pt``, ``last.pt``) or a run folder's bundle config is data: it may come from anyone, and
MONAI's ``ConfigParser`` evaluates ``$`` expressions, resolves ``@`` references, reads ``%`` macros and
instantiates any ``_target_``. So the two records ``pconv3d infer`` and the bundle tools take from a model file
are checked against a schema here, and anything else in the file is never copied into a config:

* ``network_def``: a dict whose ``_target_`` names one of this project's networks (``pconv3d.networks``) or
  MONAI's (``monai.networks.nets``) by its full path; its other keys are argument names, and its values plain
  numbers, booleans, ``null``, strings, lists and dicts of them, with no string starting with ``$``, ``@`` or
  ``%`` and no ``_target_`` (or other ``_key_``) inside. A network of another class is named in the user's
  own config or on the command line (``--network_def#_target_``), where configs are code, as in MONAI.
* ``input_recipe`` (``input_def`` before): what the network is given, read by
  :meth:`pconv3d.transforms.InputRecipe.of`: only its three settings, each of its type.

A record that fails is refused with a ``ValueError`` naming the file, the key and the value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import monai.networks.nets
import torch
import yaml

import pconv3d.networks
from pconv3d.transforms import RECIPES, InputRecipe

__all__ = ["EARLIER_RECIPE", "allowed_networks", "check_network_def", "network_def", "input_recipe", "bundle_record"]

# what every pconv3d checkpoint from before the recipe was recorded gave the network: holes at 0, the mask
EARLIER_RECIPE = RECIPES["partial"]
_PREFIXES = ("$", "@", "%")  # MONAI's expression, reference and macro markers
_MAX_DEPTH = 8


def allowed_networks() -> frozenset[str]:
    """The ``_target_`` values a model file may name: every network class of ``pconv3d.networks`` and
    ``monai.networks.nets``, by its package path and by its defining module's path."""
    names = set()
    for package in (pconv3d.networks, monai.networks.nets):
        for name in dir(package):
            cls = getattr(package, name)
            if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
                names |= {f"{package.__name__}.{name}", f"{cls.__module__}.{cls.__qualname__}"}
    return frozenset(names)


def _check_plain(value: Any, where: str, source: str, depth: int = 0) -> None:
    """Raise a ``ValueError`` unless ``value`` is made of plain values only (see the module doc)."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"{source}: {where} is nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, float)):
        return
    if isinstance(value, str):
        if value.lstrip()[:1] in _PREFIXES:
            raise ValueError(f"{source}: {where} is {value[:80]!r}; a model file holds plain values, not config "
                             f"expressions or references (starting with {', '.join(_PREFIXES)})")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}#{i}", source, depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or not key.isidentifier() or (key.startswith("_") and key.endswith("_")):
                raise ValueError(f"{source}: {where} holds the key {key!r}; a model file's arguments are plain "
                                 "names (no _target_ or other MONAI config key inside)")
            _check_plain(item, f"{where}#{key}", source, depth + 1)
        return
    raise ValueError(f"{source}: {where} is a {type(value).__name__}; expected a number, string, list or dict")


def check_network_def(value: Any, source: str | os.PathLike) -> dict[str, Any]:
    """``value`` as a network config read from ``source``, checked (see the module doc).

    Args:
        value: the recorded ``network_def``.
        source: the file it was read from, for the error message.

    Example:
        >>> check_network_def({"_target_": "monai.networks.nets.UNet", "spatial_dims": 3}, "best.pt")["spatial_dims"]
        3
    """
    source = str(source)
    if not isinstance(value, Mapping):
        raise ValueError(f"{source}: network_def is a {type(value).__name__}; expected a dict with a _target_")
    target = value.get("_target_")
    if target not in allowed_networks():
        raise ValueError(f"{source}: network_def#_target_ is {str(target)[:80]!r}, not a network of pconv3d.networks "
                         "or monai.networks.nets; to use another class, name it in your own config or with "
                         "--network_def#_target_")
    _check_plain({k: v for k, v in value.items() if k != "_target_"}, "network_def", source)
    return dict(value)


def network_def(checkpoint: Mapping[str, Any], source: str | os.PathLike) -> dict[str, Any] | None:
    """The checked ``network_def`` a checkpoint (read from ``source``) records, or ``None`` when it records none."""
    value = checkpoint.get("network_def")
    return check_network_def(value, source) if value else None


def input_recipe(checkpoint: Mapping[str, Any], source: str | os.PathLike) -> InputRecipe | None:
    """What a checkpoint's network is given, checked: its record (``input_recipe``, or ``input_def`` of earlier
    versions); :data:`EARLIER_RECIPE` for a pconv3d checkpoint from before either was recorded; ``None`` for a
    plain ``state_dict`` (the config decides)."""
    for key in ("input_recipe", "input_def"):
        if checkpoint.get(key) is not None:
            return InputRecipe.of(checkpoint[key], f"{source}: {key}")
    return EARLIER_RECIPE if checkpoint.keys() - {"network"} else None


def bundle_record(model_path: str | os.PathLike) -> dict[str, Any]:
    """For a plain ``state_dict`` at ``RUN/models/model.pt`` of a bundle written by ``pconv3d train``: the
    ``network_def`` and ``recipe`` of ``RUN/configs/inference.yaml`` (or the input keys of earlier bundles),
    read as data and checked; ``{}`` when ``model_path`` is not in such a folder."""
    config = Path(model_path).resolve().parent.parent / "configs" / "inference.yaml"
    if Path(model_path).resolve().parent.name != "models" or not config.is_file():
        return {}
    try:
        content = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{config}: cannot read the bundle's config ({type(e).__name__})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{config}: expected a mapping of config ids, got {type(content).__name__}")
    earlier = {k: content[k] for k in ("mask_input", "fill_missing", "mask_as_channel", "interpolate_slices") if k in content}
    try:
        recipe = InputRecipe.of(content.get("recipe", earlier), f"{config}: recipe")
        return {"network_def": check_network_def(content.get("network_def"), config), "recipe": recipe.name or recipe.as_dict()}
    except ValueError as e:
        raise ValueError(f"{e}. To run that config as it is (as code), pass --config {config}") from None
