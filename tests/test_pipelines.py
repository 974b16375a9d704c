"""The command line end to end on a tiny phantom dataset: train, resume, infer, evaluate, and every bad input."""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser

from pconv3d.losses import ConsistencyLoss, MaskedDiceCELoss
from pconv3d.networks import PartialUNet
from pconv3d.transforms import RECIPES, InputRecipe, PrepareBatchViews
from pipelines.cli import main
from pipelines.handlers import MetricsLog, load_checkpoint
from pipelines.infer import checkpoint_overrides
from pipelines.outputs import completed_epochs
from tests.cli_helpers import ROOT, TINY, cli, files_under


def test_train_writes_loadable_checkpoints_and_logs(trained):
    best, last = load_checkpoint(trained / "best.pt"), torch.load(trained / "last.pt", weights_only=True)
    assert best["network_def"]["_target_"] == "pconv3d.networks.GatedUNet"
    assert best["network_def"]["channels"] == [4, 8, 16]
    assert {"network", "optimizer", "lr_scheduler", "trainer", "checkpointer", "metrics_log", "network_def"} <= set(last)
    rows = json.loads((trained / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2] and all("val_mean_dice" in r for r in rows)
    assert (trained / "metrics.csv").read_text().splitlines()[0].startswith("epoch,")
    assert any((trained / "tensorboard").iterdir())
    assert not list(trained.glob(".*.tmp"))


def test_resume_continues_after_the_last_completed_epoch(dataset, trained, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("last.pt", "metrics.json", "metrics.csv"):
        (out / name).write_bytes((trained / name).read_bytes())
    before = torch.load(out / "last.pt", weights_only=True)["trainer"]["iteration"]
    assert main(["train", "--data", str(dataset), "--output", str(out), "--epochs", "3", "--resume", *TINY]) == 0
    assert "resumed" in capsys.readouterr().out
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    after = torch.load(out / "last.pt", weights_only=True)["trainer"]["iteration"]
    assert after == before * 3 // 2  # one more epoch of the same length, not a restart


def test_the_logged_loss_is_each_epochs_mean_whatever_the_progress_display(dataset, trained, tmp_path, capsys):
    shown = tmp_path / "shown"  # as `trained`, with the progress display (a running average of the loss) on
    code, err = cli(capsys, "train", "--data", dataset, "--output", shown, "--epochs", "2", *TINY, "--progress", "true")
    assert code == 0, err
    log = torch.load(trained / "last.pt", weights_only=True)["metrics_log"]
    means = [np.mean([v for it, v in log["loss"] if (it - 1) // log["epoch_length"] == e]) for e in (0, 1)]
    for run in (trained, shown):
        with (run / "metrics.csv").open() as f:
            assert [float(r["loss"]) for r in csv.DictReader(f)] == pytest.approx(means, rel=1e-6), run.name


def test_a_log_of_a_run_that_logged_the_running_average_gives_the_mean_loss(tmp_path):
    log = MetricsLog(str(tmp_path), torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))
    log.load_state_dict({"loss": [[1, 1.0], [2, 3.0]], "metrics": {"loss": [[1, 9.0], [2, 9.0]], "val_mean_dice": [[2, 0.5]]},
                         "lr": {1: 0.1}, "epoch_length": 2})
    assert log.rows() == [{"epoch": 1, "lr": 0.1, "loss": 2.0, "val_mean_dice": 0.5}]


def test_the_command_entry_freezes_its_imports_and_leaves_the_collector_on(tmp_path):
    # entry() keeps the garbage collector out of the imports and the exit; a bug there would leave it off for a
    # whole training, or change the exit code the shell sees
    code = ("import gc, sys; from pipelines.cli import entry; "
            "code = entry(['train', '--data', sys.argv[1], '--output', sys.argv[2]]); "
            "print(code, gc.isenabled(), gc.get_freeze_count())")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "absent"), str(tmp_path / "out")], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    exit_code, enabled, frozen = proc.stdout.splitlines()[-1].split()  # after any log line
    assert (exit_code, enabled) == ("2", "True") and int(frozen) > 100_000, proc.stdout
    assert "dataset.json: no such datalist file" in proc.stderr


def test_killed_mid_epoch_then_resumed_loses_nothing(dataset, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--data", str(dataset), "--output", str(out), *TINY]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([*cmd, "--epochs", "50"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (out / "last.pt").exists():
            time.sleep(0.2)
        time.sleep(0.5)  # somewhere inside a later epoch
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = torch.load(out / "last.pt", weights_only=True)  # never partial: written by rename
    epochs_done = completed_epochs(out)  # what --resume continues from (metrics.json may be an epoch ahead)
    assert done["trainer"]["iteration"] >= 1 and 1 <= epochs_done < 50
    target = epochs_done + 1
    assert main([*cmd[3:], "--epochs", str(target), "--resume"]) == 0  # in this process: the kill was the test
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == list(range(1, target + 1))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_infer_keeps_shape_and_affine_and_never_touches_inputs(dataset, trained, tmp_path):
    images = dataset / "imagesTs"
    before = files_under(dataset)
    out = tmp_path / "pred"
    assert main(["infer", "--model", str(trained / "best.pt"), "--input", str(images), "--output", str(out),
                 "--probabilities", "--progress", "false"]) == 0
    for image in sorted(images.iterdir()):
        src = nib.load(image)
        seg = nib.load(out / image.name.replace(".nii.gz", "_seg.nii.gz"))
        prob = nib.load(out / image.name.replace(".nii.gz", "_prob.nii.gz"))
        assert seg.shape == src.shape and np.allclose(seg.affine, src.affine)
        assert prob.shape == (*src.shape, 4)
        np.testing.assert_allclose(np.asarray(prob.dataobj).sum(-1), 1.0, atol=1e-4)
        assert np.array_equal(np.asarray(seg.dataobj), np.asarray(prob.dataobj).argmax(-1))
    assert files_under(dataset) == before
    # evaluation of those predictions: Dice in [0, 1], one row per case and class
    assert main(["evaluate", "--pred", str(out), "--labels", str(dataset / "dataset.json")]) == 0
    lines = (out / "dice_raw.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 and lines[0].split(",")[1:] == ["body", "organ", "lesion", "mean"]
    assert all(0 <= float(v) <= 1 for line in lines[1:] for v in line.split(",")[1:] if v != "nan")


def test_infer_refuses_to_write_over_an_input(dataset, trained, tmp_path, capsys):
    image = tmp_path / "case.nii.gz"
    image.write_bytes((dataset / "imagesTs" / sorted(os.listdir(dataset / "imagesTs"))[0]).read_bytes())
    clash = tmp_path / "case_seg.nii.gz"  # given as the mask, and also the name the label map would get
    src = nib.load(image)
    nib.save(nib.Nifti1Image(np.ones(src.shape, np.float32), src.affine), clash)
    before = files_under(tmp_path)
    code = main(["infer", "--model", str(trained / "best.pt"), "--input", str(image), "--mask", str(clash),
                 "--output", str(tmp_path), "--overwrite", "--progress", "false"])
    assert code == 2 and "overwrite an input" in capsys.readouterr().err
    assert files_under(tmp_path) == before


def test_evaluate_perfect_prediction_scores_one(dataset, tmp_path):
    labels = sorted((dataset / "labelsTs").iterdir())
    for label in labels:
        (tmp_path / label.name.replace(".nii.gz", "_seg.nii.gz")).write_bytes(label.read_bytes())
    assert main(["evaluate", "--pred", str(tmp_path), "--labels", str(dataset / "labelsTs")]) == 0
    for metric, perfect in (("dice", 1.0), ("hd95", 0.0)):
        rows = [line.split(",") for line in (tmp_path / f"{metric}_summary.csv").read_text().splitlines()]
        mean = rows[0].index("mean")
        assert [float(r[mean]) for r in rows[1:]] == pytest.approx([perfect] * (len(rows) - 1))


def _bad_inputs(tmp_path: Path, dataset: Path) -> dict[str, Path]:
    tmp_path.mkdir()
    image = sorted((dataset / "imagesTs").iterdir())[0]
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(image.read_bytes()[:200])
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), flat)
    text = tmp_path / "notes.nii.gz"
    text.write_bytes(gzip.compress(b"not an image"))
    return {"missing": tmp_path / "nope.nii.gz", "truncated": truncated, "2D": flat, "non-image": text}


@pytest.mark.parametrize("kind", ["missing", "truncated", "2D", "non-image"])
def test_infer_bad_input_files_fail_cleanly(dataset, trained, tmp_path, capsys, kind):
    bad = _bad_inputs(tmp_path / "in", dataset)
    out = tmp_path / "out"
    code = main(["infer", "--model", str(trained / "best.pt"), "--input", str(bad[kind]), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and bad[kind].name in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_bad_checkpoints_fail_cleanly(dataset, trained, tmp_path, capsys):
    image = str(sorted((dataset / "imagesTs").iterdir())[0])
    not_ckpt = tmp_path / "model.pt"
    not_ckpt.write_text("hello")
    code = main(["infer", "--model", str(not_ckpt), "--input", image, "--output", str(tmp_path / "o")])
    assert code == 2 and "not a readable checkpoint" in capsys.readouterr().err
    other = tmp_path / "other.pt"
    ckpt = load_checkpoint(trained / "best.pt")
    ckpt.pop("network_def")  # falls back to the inference config's (larger) network
    torch.save(ckpt, other)
    code = main(["infer", "--model", str(other), "--input", image, "--output", str(tmp_path / "o")])
    assert code == 2 and "another architecture" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_unknown_config_key_lists_valid_ones(dataset, tmp_path, capsys):
    code = main(["train", "--data", str(dataset), "--output", str(tmp_path), "--epoch", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown config key 'epoch'" in err and "epochs" in err
    code = main(["train", "--data", str(dataset), "--output", str(tmp_path), "--train#trainer#max_epoch", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "train#trainer#max_epochs" in err
    # a new network argument is the network's to check: named in one line before any training
    code = main(["train", "--data", str(dataset), "--output", str(tmp_path / "n"), "--network_def#chanels", "8", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "chanels" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "n" / "best.pt").exists()


def test_output_folder_not_writable(dataset, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["train", "--data", str(dataset), "--output", str(blocker / "sub"), "--epochs", "1", *TINY])
    assert code == 2 and "not writable" in capsys.readouterr().err


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "none"), "--output", str(tmp_path / "o"), "--epochs", "1", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "dataset.json" in err and "Traceback" not in err


def test_monai_bundle_runner_runs_the_same_configs(dataset, tmp_path):
    out, pred = tmp_path / "bundle", tmp_path / "pred"
    tiny = {"network_def#channels": [4, 8, 16], "network_def#strides": [2, 2], "progress": False}
    train = {"dataset_dir": str(dataset), "output_dir": str(out), "epochs": 1, "val_interval": 1,
             "patch_size": [16, 16, 16], "num_val": 1, **tiny}
    infer = {"input": str(dataset / "imagesTs"), "model_path": str(out / "best.pt"), "output_dir": str(pred), **tiny}
    # MONAI's runner (what `python -m monai.bundle run` calls), for both configs in one process: one start-up
    script = ("from monai.bundle import run; "
              f"run(config_file='configs/train.yaml', **{train!r}); run(config_file='configs/inference.yaml', **{infer!r})")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "last.pt").exists() and (out / "best.pt").exists()
    assert len(list(pred.glob("*_seg.nii.gz"))) == len(list((dataset / "imagesTs").iterdir()))


def test_two_process_training_on_gloo(dataset, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "pipelines.cli", "train",
           "--config", "train.yaml", "multi_process.yaml", "--data", str(dataset), "--output", str(out), "--epochs", "1",
           *TINY, "--num_val", "2"]  # a validation case per process
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1]  # one writer: rank 0
    assert load_checkpoint(out / "best.pt")["network"]


def test_same_seed_same_weights_and_amp_option(dataset, tmp_path):
    runs = []
    for name, extra in (("a", []), ("b", []), ("amp", ["--amp"])):
        out = tmp_path / name
        assert main(["train", "--data", str(dataset), "--output", str(out), "--epochs", "1", "--seed", "3", *extra, *TINY]) == 0
        runs.append(torch.load(out / "last.pt", weights_only=True)["network"])
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])  # deterministic with a seed
    assert all(torch.isfinite(v).all() for v in runs[2].values())


def test_infer_metaimage_in_metaimage_out(dataset, trained, tmp_path):
    import SimpleITK as sitk

    src = sorted((dataset / "imagesTs").iterdir())[0]
    mha = tmp_path / "in" / "case.mha"
    mha.parent.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(src)), str(mha))
    out = tmp_path / "out"
    assert main(["infer", "--model", str(trained / "best.pt"), "--input", str(mha), "--output", str(out), "--progress", "false"]) == 0
    ref, seg = sitk.ReadImage(str(mha)), sitk.ReadImage(str(out / "case_seg.mha"))
    assert seg.GetSize() == ref.GetSize()
    np.testing.assert_allclose(seg.GetSpacing(), ref.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(seg.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(seg.GetDirection(), ref.GetDirection(), atol=1e-6)


def test_torchrun_splits_a_folder_between_processes(dataset, trained, tmp_path):
    out = tmp_path / "pred"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "pipelines.cli", "infer",
           "--model", str(trained / "best.pt"), "--input", str(dataset / "imagesTs"), "--output", str(out),
           "--progress", "false"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name.replace(".nii.gz", "_seg.nii.gz") for p in (dataset / "imagesTs").iterdir())


@pytest.mark.parametrize("recipe, network, channels", [
    ("plain", "monai.networks.nets.UNet", 1),
    ("{mask_input: true, fill: soft, mask_as_channel: false}", "pconv3d.networks.PartialUNet", 1),
    ("{mask_input: false, fill: interpolate, mask_as_channel: true}", "monai.networks.nets.UNet", 2),
])
def test_input_recipes_are_recorded_and_replayed_at_inference(dataset, tmp_path, recipe, network, channels):
    """What the network is given travels in the checkpoint, so `infer` with no option segments like the
    training's validation did; a named recipe is one word and brings its network."""
    out = tmp_path / "run"
    named = ["--recipe", recipe] if not recipe.startswith("{") else ["--recipe", recipe, "--network_def#_target_", network]
    assert main(["train", "--data", str(dataset), "--output", str(out), "--epochs", "1", *TINY, *named]) == 0
    best = load_checkpoint(out / "best.pt")
    assert best["input_recipe"] == InputRecipe.of(yaml.safe_load(recipe)).as_dict()
    assert best["network_def"]["_target_"] == network and best["network_def"]["in_channels"] == channels
    images = dataset / "imagesTs"
    assert main(["infer", "--model", str(out / "best.pt"), "--input", str(images), "--output", str(tmp_path / "p"),
                 "--progress", "false"]) == 0
    assert len(list((tmp_path / "p").glob("*_seg.nii.gz"))) == len(list(images.iterdir()))


@pytest.mark.parametrize("network, recipe, shown", [
    ("pconv3d.networks.PartialUNet", "gated", "PartialUNet takes a validity mask"),
    ("monai.networks.nets.UNet", "partial", "UNet takes no mask input"),
])
def test_a_network_that_does_not_fit_its_recipe_is_refused_before_training(dataset, tmp_path, capsys, network, recipe, shown):
    out = tmp_path / "run"
    code, err = cli(capsys, "train", "--data", dataset, "--output", out, "--epochs", "1", *TINY,
                    "--network_def#_target_", network, "--recipe", recipe)
    assert code == 2 and shown in err, err
    assert not out.exists()


def test_interpolated_unet_overlay_is_a_complete_recipe(dataset, trained_plain, tmp_path):
    """configs/unet_interpolated.yaml: a MONAI UNet on interpolated input, no simulated holes, replayed by infer."""
    out = trained_plain
    best = load_checkpoint(out / "best.pt")
    assert best["network_def"]["_target_"] == "monai.networks.nets.UNet" and best["network_def"]["in_channels"] == 1
    assert best["input_recipe"] == RECIPES["plain"].as_dict()
    assert main(["infer", "--model", str(out / "best.pt"), "--input", str(dataset / "imagesTs"), "--output",
                 str(tmp_path / "p"), "--progress", "false"]) == 0
    assert len(list((tmp_path / "p").glob("*_seg.nii.gz"))) == len(list((dataset / "imagesTs").iterdir()))


@pytest.mark.parametrize("consistency", [None, {"weight": 0.5}])
def test_consistency_key_chooses_views_batch_and_loss(consistency):
    """configs/train.yaml: consistency null changes nothing; a mapping gives the trainer both views and the loss."""
    parser = ConfigParser()
    parser.read_config(ROOT / "configs" / "train.yaml")
    parser["consistency"] = consistency
    parser.get_parsed_content("imports")
    assert parser["train#trainer#loss_function"].replace("::", "#") == "@train#loss"
    assert parser["train#trainer#prepare_batch"].replace("::", "#") == "@train#prepare_batch"
    loss, prepare = parser.get_parsed_content("train#loss"), parser.get_parsed_content("train#prepare_batch")
    steps = [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]
    if consistency is None:
        assert type(loss) is MaskedDiceCELoss and type(prepare) is not PrepareBatchViews and "CopyItemsd" not in steps
    else:
        assert isinstance(loss, ConsistencyLoss) and loss.weight == 0.5 and isinstance(loss.loss, MaskedDiceCELoss)
        assert isinstance(prepare, PrepareBatchViews) and "CopyItemsd" in steps


@pytest.mark.parametrize("recipe", ["gated", "partial"])  # the mask as a channel; the mask as the network's input
def test_consistency_training_runs(dataset, tmp_path, capsys, recipe):
    out = tmp_path / "run"
    code, err = cli(capsys, "train", "--data", dataset, "--output", out, "--epochs", "1", *TINY, "--recipe", recipe,
                    "--consistency", "{weight: 1.0}")
    assert code == 0, err
    assert load_checkpoint(out / "best.pt")["input_recipe"] == RECIPES[recipe].as_dict()


@pytest.mark.parametrize("record", [None, {"mask_input": True, "fill_missing": None, "mask_as_channel": False,
                                            "interpolate_slices": None}])
def test_a_checkpoint_from_before_the_recipe_was_recorded_still_runs(trained, dataset, tmp_path, record):
    """Earlier configs gave every network the image with holes at 0 and the mask and recorded nothing, or
    recorded their four switches as ``input_def``: infer replays that whatever today's defaults are."""
    old = load_checkpoint(trained / "best.pt")
    old = {k: v for k, v in old.items() if k != "input_recipe"}
    if record is not None:
        old["input_def"] = record
    old["network_def"] = {**old["network_def"], "_target_": "pconv3d.networks.PartialUNet", "in_channels": 1}
    network = PartialUNet(**{k: v for k, v in old["network_def"].items() if k != "_target_"})
    old["network"] = network.state_dict()
    torch.save(old, tmp_path / "old.pt")
    assert checkpoint_overrides(str(tmp_path / "old.pt"), [])["recipe"] == "partial"
    assert main(["infer", "--model", str(tmp_path / "old.pt"), "--input", str(dataset / "imagesTs"),
                 "--output", str(tmp_path / "p"), "--progress", "false"]) == 0
    assert len(list((tmp_path / "p").glob("*_seg.nii.gz"))) == len(list((dataset / "imagesTs").iterdir()))


def test_bundle_metadata_names_the_classes_of_the_default_dataset():
    from pconv3d.data.mni import LABELS

    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == LABELS


def test_training_computes_subnormals_as_zero_unless_told_not_to(dataset, tmp_path):
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormal floats")
    for name, extra, kept in (("default", [], False), ("kept", ["--flush_denormal", "false"], True)):
        torch.set_flush_denormal(kept)  # the opposite of what the run should leave
        assert main(["train", "--data", str(dataset), "--output", str(tmp_path / name), "--epochs", "1",
                     *TINY, "--val_interval", "2", *extra]) == 0
        assert (torch.tensor([1e-39]).mul(1.0).item() > 0) == kept, name
