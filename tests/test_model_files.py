"""A model file is data, not code: every injection a checkpoint or a run folder could carry is refused before
any config sees it, and nothing it names runs (a sentinel file stays absent)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pipelines.handlers import init_network, load_checkpoint, network_from_checkpoint
from pconv3d.transforms import InputRecipe
from pipelines.records import allowed_networks, check_network_def
from tests.cli_helpers import cli, files_under


def _payload(sentinel: Path) -> str:
    return f"$__import__('pathlib').Path({str(sentinel)!r}).touch() or 2"


def _injections(sentinel: Path) -> dict[str, tuple[str, object, str]]:
    """name: (checkpoint key, value, text the refusal must name)."""
    touch = {"_target_": "pathlib.Path.touch", "self": str(sentinel)}
    return {
        "expression argument": ("network_def#in_channels", _payload(sentinel), "network_def#in_channels"),
        "component argument": ("network_def#act", touch, "'_target_'"),
        "component in a list": ("network_def#norm", ["instance", touch], "'_target_'"),
        "reference argument": ("network_def#out_channels", "@num_classes", "network_def#out_channels"),
        "macro argument": ("network_def#channels", "%configs/train.yaml#network_def#channels", "network_def#channels"),
        "top-level target": ("network_def#_target_", "os.system", "'os.system'"),
        "disabled key": ("network_def#_disabled_", _payload(sentinel), "'_disabled_'"),
        "extra input id": ("input_recipe#output_dir", _payload(sentinel), "'output_dir'"),
        "input expression": ("input_recipe#fill", _payload(sentinel), "input_recipe#fill"),
        "input overwrite": ("input_recipe#overwrite", True, "'overwrite'"),
        "input of the wrong type": ("input_recipe#mask_as_channel", "yes", "input_recipe#mask_as_channel"),
        "input names a network": ("input_recipe#network", "os.system", "'network'"),
        "earlier input record": ("input_def#interpolate_slices", _payload(sentinel), "input_def#interpolate_slices"),
    }


def _tampered(trained: Path, folder: Path, key: str, value: object) -> Path:
    ckpt = load_checkpoint(trained / "best.pt")
    record, name = key.split("#")
    if record == "input_def":  # the record of earlier versions
        ckpt["input_def"] = {"fill_missing": "soft", "mask_as_channel": True}
        del ckpt["input_recipe"]
    ckpt[record] = {**ckpt[record], name: value}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, folder / "best.pt")
    return folder / "best.pt"


@pytest.mark.parametrize("name", list(_injections(Path("x"))))
def test_infer_refuses_every_injection_and_runs_nothing(dataset, trained, tmp_path, capsys, name):
    sentinel = tmp_path / "pwned"
    key, value, shown = _injections(sentinel)[name]
    model = _tampered(trained, tmp_path / "model", key, value)
    out = tmp_path / "pred"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    before = files_under(out)
    code, err = cli(capsys, "infer", "--model", model, "--input", dataset / "imagesTs", "--output", out)
    assert code == 2 and str(model) in err and shown in err, err
    assert not sentinel.exists()
    assert files_under(out) == before
    if key.startswith("network_def"):  # the other readers of network_def refuse it too
        with pytest.raises(ValueError, match="network_def"):
            network_from_checkpoint(model)
        assert not sentinel.exists()


def test_a_checkpoint_cannot_set_another_config_id(dataset, trained, tmp_path, capsys):
    """``overwrite: true`` in a checkpoint does not replace earlier predictions without ``--overwrite``."""
    out = tmp_path / "pred"
    assert cli(capsys, "infer", "--model", trained / "best.pt", "--input", dataset / "imagesTs", "--output", out,
               "--progress", "false")[0] == 0
    before = files_under(out)
    model = _tampered(trained, tmp_path / "model", "input_recipe#overwrite", True)
    code, err = cli(capsys, "infer", "--model", model, "--input", dataset / "imagesTs", "--output", out)
    assert code == 2 and "overwrite" in err
    assert files_under(out) == before


def test_init_from_reads_only_the_weights(dataset, trained, tmp_path):
    sentinel = tmp_path / "pwned"
    model = _tampered(trained, tmp_path / "model", "network_def#in_channels", _payload(sentinel))
    network = network_from_checkpoint(trained / "best.pt")
    init_network(network, model)
    assert not sentinel.exists()


def test_a_run_folders_own_weights_segment_with_its_recipe(dataset, trained, tmp_path, capsys):
    """``RUN/models/model.pt`` is a plain state_dict: the recipe comes from the bundle's config, read as data."""
    out = tmp_path / "pred"
    assert cli(capsys, "infer", "--model", trained / "models" / "model.pt", "--input", dataset / "imagesTs",
               "--output", out, "--progress", "false")[0] == 0
    reference = tmp_path / "reference"
    assert cli(capsys, "infer", "--model", trained / "best.pt", "--input", dataset / "imagesTs",
               "--output", reference, "--progress", "false")[0] == 0
    assert files_under(out) == files_under(reference)


def test_a_run_folders_config_is_read_as_data(dataset, trained, tmp_path, capsys):
    sentinel = tmp_path / "pwned"
    run = tmp_path / "run"
    shutil.copytree(trained / "models", run / "models")
    shutil.copytree(trained / "configs", run / "configs")
    config = yaml.safe_load((run / "configs" / "inference.yaml").read_text())
    config["network_def"]["in_channels"] = _payload(sentinel)
    (run / "configs" / "inference.yaml").write_text(yaml.safe_dump(config))
    code, err = cli(capsys, "infer", "--model", run / "models" / "model.pt", "--input", dataset / "imagesTs",
                    "--output", tmp_path / "pred")
    assert code == 2 and "network_def#in_channels" in err and "--config" in err
    assert not sentinel.exists()


def test_a_plain_state_dict_outside_a_bundle_takes_the_configs_recipe(trained, tmp_path):
    from pipelines.infer import checkpoint_overrides

    torch.save(load_checkpoint(trained / "best.pt")["network"], tmp_path / "weights.pt")
    assert checkpoint_overrides(str(tmp_path / "weights.pt"), []) == {"model_path": str(tmp_path / "weights.pt")}


@pytest.mark.parametrize("target", ["pconv3d.networks.GatedUNet", "pconv3d.networks.unet.PartialUNet",
                                    "monai.networks.nets.UNet", "monai.networks.nets.unet.UNet",
                                    "monai.networks.nets.SegResNet"])
def test_project_and_monai_networks_are_allowed(target):
    assert target in allowed_networks()
    value = {"_target_": target, "spatial_dims": 3, "act": ["prelu", {"init": 0.2}], "dropout": 0.0, "kernel_size": [3, 3, 1]}
    assert check_network_def(value, "m.pt") == value


@pytest.mark.parametrize("value, shown", [
    ({"_target_": "torch.nn.Conv3d"}, "'torch.nn.Conv3d'"),
    ({"_target_": "monai.networks.nets"}, "'monai.networks.nets'"),
    ({"spatial_dims": 3}, "None"),
    ("monai.networks.nets.UNet", "str"),
    ({"_target_": "monai.networks.nets.UNet", "in_channels": b"2"}, "bytes"),
    ({"_target_": "monai.networks.nets.UNet", "a#b": 1}, "'a#b'"),
    ({"_target_": "monai.networks.nets.UNet", "act": [[[[[[[[[["relu"]]]]]]]]]]}, "deeper"),
    ({"_target_": "monai.networks.nets.UNet", "act": " $x"}, "network_def#act"),
])
def test_network_records_that_are_refused(value, shown):
    with pytest.raises(ValueError, match="^m.pt: ") as e:
        check_network_def(value, "m.pt")
    assert shown in str(e.value)


@pytest.mark.parametrize("value, shown", [
    ({"interpolate_slices": True}, "interpolate_slices"),
    ({"interpolate_slices": 3}, "interpolate_slices"),
    ({"fill": "nearest"}, "fill"),
    ({"fill_missing": "nearest"}, "fill"),
    ({"mask_input": 1}, "mask_input"),
    ({"network": "os.system"}, "'network'"),
    ("unknown", "'unknown'"),
    ([], "list"),
])
def test_input_records_that_are_refused(value, shown):
    with pytest.raises(ValueError, match="^m.pt: input_recipe") as e:
        InputRecipe.of(value, "m.pt: input_recipe")
    assert shown in str(e.value)
