"""A training run folder as a MONAI bundle: what ``pconv3d train`` adds to it when training ends.

MONAI's bundle specification puts ``configs/metadata.json``, ``configs/inference.yaml`` (and the training
config), ``models/model.pt`` (a plain ``state_dict``, as the model zoo ships) and ``docs/README.md`` in one
folder, with the licence. The run folder gets them, with the configs set to the trained architecture and to
what its network is given (its input recipe), so MONAI's bundle tools work on it directly::

    python -m monai.bundle verify_net_in_out network_def --meta_file RUN/configs/metadata.json \\
        --config_file RUN/configs/inference.yaml
    python -m monai.bundle ckpt_export network_def --filepath RUN/models/model.ts \\
        --ckpt_file RUN/models/model.pt --meta_file RUN/configs/metadata.json --config_file RUN/configs/inference.yaml
    python -m monai.bundle run --config_file RUN/configs/inference.yaml --bundle_root RUN --input FILE_OR_DIR
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from pconv3d.io.sitk import atomic_write
from pconv3d.transforms import InputRecipe
from pipelines import records
from pipelines.config import CONFIG_DIR
from pipelines.handlers import BEST, atomic_save, load_checkpoint

__all__ = ["write_bundle", "MODEL"]

MODEL = Path("models") / "model.pt"
_MASK_CHANNEL = "validity mask (1 = acquired; with fill soft: confidence in (0, 1])"


def _yaml(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, width=120)


def _metadata(template: dict[str, Any], network_def: dict[str, Any], recipe: InputRecipe) -> dict[str, Any]:
    """``template`` (the project's metadata) with the inputs and description of this network, and its input
    recipe recorded in ``network_data_format`` (``input_recipe``)."""
    meta = json.loads(json.dumps(template))
    data_format = meta["network_data_format"]
    inputs = data_format["inputs"]
    image = inputs["image"]
    channels = int(network_def["in_channels"])
    images = recipe.image_channels(channels)
    filled = f" (holes filled: {recipe.fill})" if recipe.fill else " (holes at 0)"
    image["num_channels"] = channels
    image["channel_def"] = {str(c): f"MR image{filled}" for c in range(images)}
    if recipe.mask_as_channel:
        image["channel_def"][str(images)] = _MASK_CHANNEL
    if recipe.mask_input:
        inputs["condition"] = {**image, "format": "segmentation", "num_channels": 1, "value_range": [0, 1],
                               "channel_def": {"0": _MASK_CHANNEL}}
    else:
        inputs.pop("condition", None)
    data_format["input_recipe"] = recipe.as_dict()
    data_format["outputs"]["pred"]["num_channels"] = int(network_def["out_channels"])
    name = str(network_def["_target_"]).rsplit(".", 1)[-1]
    meta["description"] = (f"A {name} trained on the default MNI152-derived dataset"
                           + (f" with the input recipe '{recipe.name}'" if recipe.name else "") + "; holes "
                           + (f"filled ({recipe.fill})" if recipe.fill else "at 0")
                           + (", the mask as a channel" if recipe.mask_as_channel else "")
                           + (", the mask as an input" if recipe.mask_input else ""))
    return meta


def write_bundle(output_dir: str | Path, bundle_root: str | Path | None = None) -> Path:
    """Make ``output_dir`` (a finished run holding ``best.pt``) a MONAI bundle, from the configs, docs and
    licence under ``bundle_root`` (default: this project's); returns the path of ``models/model.pt``. Files
    are written atomically and replace the bundle files of this run only."""
    out, root = Path(output_dir), Path(bundle_root) if bundle_root is not None else CONFIG_DIR.parent
    ckpt = load_checkpoint(out / BEST)
    network_def, recipe = records.network_def(ckpt, out / BEST), records.input_recipe(ckpt, out / BEST)
    # a run started by `python -m monai.bundle run` records no network_def: its configs are the bundle's as they are
    trained = {"network_def": network_def, "recipe": recipe.name or recipe.as_dict()} if network_def else {}
    (out / MODEL).parent.mkdir(exist_ok=True)
    atomic_save(ckpt["network"], out / MODEL)
    (out / "configs").mkdir(exist_ok=True)
    for name in ("inference.yaml", "train.yaml"):
        config = yaml.safe_load((root / "configs" / name).read_text())
        config.update(trained)
        if name == "inference.yaml":
            config["model_path"] = f"$@bundle_root + '/{MODEL.as_posix()}'"
        atomic_write(out / "configs" / name, lambda p, c=config: p.write_text(_yaml(c)), overwrite=True)
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    if network_def:
        meta = _metadata(meta, network_def, recipe)
    atomic_write(out / "configs" / "metadata.json", lambda p: p.write_text(json.dumps(meta, indent=2)), overwrite=True)
    shutil.copyfile(root / "configs" / "logging.conf", out / "configs" / "logging.conf")
    (out / "docs").mkdir(exist_ok=True)
    shutil.copyfile(root / "docs" / "README.md", out / "docs" / "README.md")
    shutil.copyfile(root / "LICENSE", out / "LICENSE")
    return out / MODEL
