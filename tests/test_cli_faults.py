"""Fault injection through the command line: a user's mistakes and a machine's faults, on tiny data.

Every case ends in a correct result or in one line on stderr with exit code 2 (130 for Ctrl-C), never a
traceback, and leaves the files of earlier runs and of the user byte-identical unless ``--overwrite`` was given.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pconv3d.io import save_volume
from pconv3d.io.datalist import generated_dataset_settings
from pipelines.handlers import load_checkpoint
from pipelines.infer import check_inference
from pipelines.outputs import TRAINING_LOCK, completed_epochs
from tests.cli_helpers import ROOT, TINY, cli, files_under


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _image(dataset: Path) -> Path:
    return sorted((dataset / "imagesTs").iterdir())[0]


def _write_like(path: Path, reference: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    ref = nib.load(reference)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, ref.affine if affine is None else affine), path)
    return path


def _dataset_with_label(dataset: Path, tmp_path: Path, values, case: int = 0) -> Path:
    """A copy of ``dataset`` whose training label ``case`` (default the first; -1, the last, is the validation
    case with ``--num_val 1``) is replaced by ``values(label)``."""
    copy = _copy(dataset, tmp_path / "data")
    doc = json.loads((copy / "dataset.json").read_text())
    label = copy / doc["training"][case]["label"]
    data = np.asarray(nib.load(label).dataobj)
    _write_like(label, label, values(data))
    return copy


# ---- data loss and silently wrong results ----------------------------------------------------------------


def test_train_into_an_earlier_run_is_refused_and_overwrite_replaces_it_whole(dataset, trained, tmp_path, capsys):
    out = _copy(trained, tmp_path / "run")
    before = files_under(out)
    code, err = cli(capsys, "train", "--data", dataset, "--output", out, "--epochs", "1", *TINY)
    assert code == 2 and "already holds a training run" in err and "--resume" in err and "--overwrite" in err
    assert files_under(out) == before
    (out / "notes.txt").write_text("mine")  # a user's file beside the run is not part of it
    code, _ = cli(capsys, "train", "--data", dataset, "--output", out, "--epochs", "1", "--overwrite", *TINY)
    assert code == 0
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1]  # this run's only
    assert completed_epochs(out / "best.pt") == 1  # best of this run, not the earlier one's
    assert len(list((out / "tensorboard").iterdir())) == 1
    assert (out / "notes.txt").read_text() == "mine"


def test_a_folder_another_training_writes_is_refused_and_a_killed_one_blocks_nothing(dataset, trained, tmp_path, capsys):
    out = _copy(trained, tmp_path / "run")
    holder = subprocess.Popen(  # a training's lock, in a process killed as kill -9 does
        [sys.executable, "-c", "import sys, time; from pipelines.outputs import lock_training_output; "
         "lock_training_output(sys.argv[1]); print('held', flush=True); time.sleep(300)", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = files_under(out)
        for how in ("--resume", "--overwrite"):
            code, err = cli(capsys, "train", "--data", dataset, "--output", out, "--epochs", "3", how, *TINY)
            assert code == 2 and f"another training is writing into {out.resolve()}" in err, err
        assert files_under(out) == before
    finally:
        holder.kill()
        holder.wait()
    assert (out / TRAINING_LOCK).exists()  # left behind by the killed process, but no longer locked
    code, err = cli(capsys, "train", "--data", dataset, "--output", out, "--epochs", "3", "--resume", *TINY)
    assert code == 0, err
    assert completed_epochs(out) == 3 and not (out / TRAINING_LOCK).exists()


def test_inputs_that_would_share_an_output_name_are_refused(dataset, trained, tmp_path, capsys):
    image = _image(dataset)
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(image, folder / "case.nii.gz")
    shutil.copy(image, folder / "other.nii.gz")
    save_volume(np.asarray(nib.load(image).dataobj, np.float32), nib.load(image).affine, folder / "case.nrrd")
    code, err = cli(capsys, "infer", "--model", trained / "best.pt", "--input", folder, "--output", tmp_path / "o")
    assert code == 2 and "case.nii.gz and case.nrrd: two volumes named case" in err
    assert not (tmp_path / "o").exists()
    twins = [{"image": str(_copy(dataset / "imagesTs", tmp_path / d) / image.name)} for d in ("a", "b")]
    with pytest.raises(ValueError, match=re.escape(f"{twins[0]['image']} and {twins[1]['image']} would both be segmented into")):
        check_inference(twins, str(tmp_path / "o"), overwrite=True, probabilities=False, in_channels=1)


def test_data_into_a_dataset_of_other_settings_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "data"
    args = ["data", "--kind", "phantom", "--size", "16", "--n-train", "1", "--n-test", "1", "--output", out]
    assert cli(capsys, *args)[0] == 0
    assert cli(capsys, *args)[0] == 0  # the same settings: written again
    before = files_under(out)
    code, err = cli(capsys, *args, "--n-train", "2", "--seed", "1")
    assert code == 2 and f"{out}: holds a dataset generated with other settings" in err, err
    assert "n_train 1 -> 2" in err and "seed 0 -> 1" in err and "--overwrite" in err
    assert files_under(out) == before
    assert cli(capsys, *args, "--n-train", "2", "--seed", "1", "--overwrite")[0] == 0
    assert generated_dataset_settings(out) == {"kind": "phantom", "n_train": 2, "n_test": 1, "size": 16, "seed": 1}


def test_run_refuses_a_dataset_of_another_kind(tmp_path, capsys):
    from pconv3d.data import make_dataset

    make_dataset("phantom", tmp_path / "out" / "data", n_train=2, n_test=1, size=16)
    before = files_under(tmp_path / "out")
    code, err = cli(capsys, "run", "--kind", "mni", "--output", tmp_path / "out", "--epochs", "1")
    assert code == 2 and "another dataset (phantom" in err and "--overwrite" in err
    assert files_under(tmp_path / "out") == before


def test_run_typed_twice_reuses_what_is_complete_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "outputs"
    args = ["run", "--kind", "phantom", "--epochs", "1", "--output", out, *TINY]
    assert cli(capsys, *args)[0] == 0
    training = files_under(out / "train")
    capsys.readouterr()
    code = cli(capsys, *args)[0]
    assert code == 0
    assert files_under(out / "train") == training  # the complete training was reused, not redone
    assert (out / "predictions" / "metrics.csv").is_file()
    before = files_under(out)
    code, err = cli(capsys, "run", "--kind", "phantom", "--epochs", "2", "--output", out, *TINY)
    assert code == 2 and "epochs 1 -> 2" in err and "--overwrite" in err
    assert files_under(out) == before


def test_evaluate_refuses_predictions_off_the_label_grid(dataset, tmp_path, capsys):
    ref = nib.load(sorted((dataset / "labelsTs").iterdir())[0])
    shifted = ref.affine.copy()
    shifted[:3, 3] += 100.0
    flipped = ref.affine @ np.diag([-1.0, 1, 1, 1])
    for name, affine in (("shifted", shifted), ("flipped", flipped)):
        pred = tmp_path / name
        for other in sorted((dataset / "labelsTs").iterdir()):
            _write_like(pred / other.name.replace(".nii.gz", "_seg.nii.gz"), other, np.asarray(nib.load(other).dataobj), affine)
        code, err = cli(capsys, "evaluate", "--pred", pred, "--labels", dataset / "labelsTs")
        assert code == 2 and "not on the grid of its label" in err, name
        assert not (pred / "metrics.csv").exists()


@pytest.mark.parametrize("values, shown", [
    (lambda d: d.astype(np.float32) * 0.5 + 0.25, "0.25"),  # float labels, 0.25-1.75
    (lambda d: np.where(d == 1, 7, d).astype(np.uint8), "7"),
    (lambda d: np.where(d == 1, -1, d.astype(np.int16)), "-1"),
])
def test_train_refuses_labels_that_are_not_class_indices(dataset, tmp_path, capsys, values, shown):
    data = _dataset_with_label(dataset, tmp_path, values)
    out = tmp_path / "run"
    code, err = cli(capsys, "train", "--data", data, "--output", out, "--epochs", "1", *TINY)
    assert code == 2 and "labelsTr" in err and (f"found {shown}" in err or f"value {shown} " in err), err
    assert not out.exists()  # nothing left behind


@pytest.mark.parametrize("index", [0, 2])  # a training case, and the one held out for validation (--num_val 1)
@pytest.mark.parametrize("label", ["absent", None])
def test_a_case_without_a_label_is_refused_before_training(dataset, tmp_path, capsys, index, label):
    copy = _copy(dataset, tmp_path / "data")
    doc = json.loads((copy / "dataset.json").read_text())
    doc["training"][index].pop("label") if label == "absent" else doc["training"][index].update(label=label)
    (copy / "dataset.json").write_text(json.dumps(doc))
    out = tmp_path / "run"
    code, err = cli(capsys, "train", "--data", copy, "--output", out, "--epochs", "1", *TINY)
    assert code == 2 and f"training[{index}]: no 'label' file" in err, err
    assert not out.exists()


def test_unannotated_voxels_in_a_validation_label_are_left_out_of_its_dice(dataset, tmp_path, capsys):
    half = lambda d: np.where(np.arange(d.shape[0])[:, None, None] < d.shape[0] // 2, 255, d).astype(np.uint8)
    data = _dataset_with_label(dataset, tmp_path, half, case=-1)
    out = tmp_path / "run"
    code, err = cli(capsys, "train", "--data", data, "--output", out, "--epochs", "1", *TINY)
    assert code == 0, err
    assert (out / "best.pt").is_file()
    assert 0 <= json.loads((out / "metrics.json").read_text())[0]["val_mean_dice"] <= 1


def test_a_volume_without_any_valid_voxel_is_an_error(dataset, trained, tmp_path, capsys):
    image = _image(dataset)
    nan = _write_like(tmp_path / "in" / "nan.nii.gz", image, np.full(nib.load(image).shape, np.nan, np.float32))
    code, err = cli(capsys, "infer", "--model", trained / "best.pt", "--input", nan, "--output", tmp_path / "o")
    assert code == 2 and "nan.nii.gz: no valid voxel" in err
    zeros = _write_like(tmp_path / "in" / "zero_mask.nii.gz", image, np.zeros(nib.load(image).shape, np.float32))
    code, err = cli(capsys, "infer", "--model", trained / "best.pt", "--input", image, "--mask", zeros,
                    "--output", tmp_path / "o")
    assert code == 2 and "no valid voxel" in err and "zero_mask.nii.gz" in err
    assert not (tmp_path / "o").exists()


def test_resume_with_more_epochs_stretches_the_schedule(dataset, trained, tmp_path, capsys):
    out = _copy(trained, tmp_path / "run")
    code = cli(capsys, "train", "--data", dataset, "--output", out, "--epochs", "2", "--resume", *TINY)[0]
    assert code == 0  # already complete: nothing to do, nothing lost
    assert json.loads((out / "metrics.json").read_text())[-1]["epoch"] == 2
    capsys.readouterr()
    from pipelines.cli import main

    ended = torch.load(out / "last.pt", weights_only=True)["optimizer"]["param_groups"][0]["lr"]
    assert ended < 1e-9  # the 2-epoch cosine schedule has reached 0
    assert main(["train", "--data", str(dataset), "--output", str(out), "--epochs", "4", "--resume", *TINY]) == 0
    said = capsys.readouterr().out
    assert "stretched from 2 to 4 epochs" in said
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    lr0 = rows[0]["lr"]  # epochs 3 and 4 train at the 4-epoch cosine's values, not at 0
    assert rows[2]["lr"] == pytest.approx(lr0 * (1 + math.cos(math.pi * 2 / 4)) / 2)
    assert rows[3]["lr"] == pytest.approx(lr0 * (1 + math.cos(math.pi * 3 / 4)) / 2)
    sched = torch.load(out / "last.pt", weights_only=True)["lr_scheduler"]
    assert sched["T_max"] == 4 and sched["last_epoch"] == 4
    code, err = cli(capsys, "train", "--data", dataset, "--output", out, "--epochs", "3", "--resume", *TINY)
    assert code == 2 and "fewer than the 4 epochs" in err


def test_resume_without_a_run_is_refused(dataset, tmp_path, capsys):
    code, err = cli(capsys, "train", "--data", dataset, "--output", tmp_path / "none", "--epochs", "1", "--resume", *TINY)
    assert code == 2 and "nothing to resume" in err and "last.pt" in err
    assert not (tmp_path / "none").exists()


def test_earlier_outputs_in_an_input_folder_are_not_segmented(dataset, trained, tmp_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(_image(dataset), folder)
    args = ["infer", "--model", trained / "best.pt", "--input", folder, "--output", folder, "--progress", "false"]
    assert cli(capsys, *args)[0] == 0
    from pipelines.cli import main

    assert main([str(a) for a in args] + ["--overwrite"]) == 0
    assert "skipping 1 earlier output" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == sorted([_image(dataset).name,
                                                                _image(dataset).name.replace(".nii.gz", "_seg.nii.gz")])


# ---- a clear error instead of a traceback -------------------------------------------------------------------


def test_unreadable_checkpoints(dataset, trained, tmp_path, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    code, err = cli(capsys, "infer", "--model", empty, "--input", _image(dataset), "--output", tmp_path / "o")
    assert code == 2 and "empty.pt" in err
    code, err = cli(capsys, "train", "--data", dataset, "--output", tmp_path / "t", "--epochs", "1", "--resume", *TINY)
    assert code == 2
    assert not (tmp_path / "o").exists() and not (tmp_path / "t").exists()


def test_existing_output_is_refused_before_inference(dataset, trained, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    seg = out / _image(dataset).name.replace(".nii.gz", "_seg.nii.gz")
    seg.parent.mkdir()
    seg.write_bytes(b"earlier result")
    import monai.inferers

    def never(*args, **kwargs):
        raise AssertionError("inference ran before the output check")

    monkeypatch.setattr(monai.inferers.SlidingWindowInferer, "__call__", never)
    code, err = cli(capsys, "infer", "--model", trained / "best.pt", "--input", _image(dataset), "--output", out)
    assert code == 2 and "already exist" in err and "--overwrite" in err
    assert seg.read_bytes() == b"earlier result"


@pytest.mark.parametrize("device", ["gpu0", "cpu')", "cuda", "cuda:7", "tpu"])
def test_devices_are_parsed_not_evaluated(dataset, trained, tmp_path, capsys, device):
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    code, err = cli(capsys, "infer", "--model", trained / "best.pt", "--input", _image(dataset),
                    "--output", tmp_path / "o", "--device", device)
    assert code == 2 and "--device" in err and repr(device) in err
    assert not (tmp_path / "o").exists()


def test_cpu_device_works(dataset, trained, tmp_path, capsys):
    code, _ = cli(capsys, "infer", "--model", trained / "best.pt", "--input", _image(dataset),
                  "--output", tmp_path / "o", "--device", "cpu", "--progress", "false")
    assert code == 0 and len(list((tmp_path / "o").iterdir())) == 1


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_sliding_window_batch_size_must_be_positive(dataset, trained, tmp_path, capsys, value):
    code, err = cli(capsys, "infer", "--model", trained / "best.pt", "--input", _image(dataset),
                    "--output", tmp_path / "o", "--sw-batch-size", value)
    assert code == 2 and "--sw-batch-size" in err and repr(value) in err


def test_bad_configs_and_overrides(dataset, tmp_path, capsys):
    text = tmp_path / "string.yaml"
    text.write_text('"just a string"\n')
    base = ["train", "--data", dataset, "--output", tmp_path / "o", "--epochs", "1"]
    code, err = cli(capsys, *base, "--config", text)
    assert code == 2 and "string.yaml" in err and "mapping" in err
    code, err = cli(capsys, *base, "--patch_size", "[32,32")
    assert code == 2 and "--patch_size" in err and "[32,32" in err
    code, err = cli(capsys, *base, "--learning_rate", "abc")
    assert code == 2 and "--learning_rate" in err and "a number" in err and "'abc'" in err
    code, err = cli(capsys, *base, "--val_interval", "[1]")
    assert code == 2 and "--val_interval" in err and "a number" in err
    code, err = cli(capsys, "run", "--missing", "1.5", "--output", tmp_path / "o")
    assert code == 2 and "--missing" in err and "1.5" in err
    assert not (tmp_path / "o").exists()


def test_resume_with_another_architecture(dataset, trained, tmp_path, capsys):
    out = _copy(trained, tmp_path / "run")
    before = files_under(out)
    code, err = cli(capsys, "train", "--data", dataset, "--output", out, "--epochs", "3", "--resume",
                    *TINY, "--network_def#channels", "[4,8,32]")
    assert code == 2 and "another architecture" in err
    assert files_under(out) == before


def test_disk_full_while_saving_a_checkpoint_keeps_the_earlier_one(dataset, trained, tmp_path, capsys, monkeypatch):
    out = _copy(trained, tmp_path / "run")
    checkpoints = {name: (out / name).read_bytes() for name in ("last.pt", "best.pt")}
    write_bytes = pathlib.Path.write_bytes

    def full(self, data):
        if self.suffix == ".pt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_bytes(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    code, err = cli(capsys, "train", "--data", dataset, "--output", out, "--epochs", "3", "--resume", *TINY)
    assert code == 2 and "No space left on device" in err and ".pt" in err
    assert {name: (out / name).read_bytes() for name in checkpoints} == checkpoints
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries


def test_evaluate_label_outside_the_classes(dataset, tmp_path, capsys):
    labels = dataset / "labelsTs"
    for label in labels.iterdir():
        shutil.copy(label, tmp_path / label.name.replace(".nii.gz", "_seg.nii.gz"))
    code, err = cli(capsys, "evaluate", "--pred", tmp_path, "--labels", labels, "--classes", "background", "csf")
    assert code == 2 and "is not a class index 0..1" in err
    assert not (tmp_path / "metrics.csv").exists()
    assert cli(capsys, "evaluate", "--pred", tmp_path, "--labels", labels)[0] == 0
    before = files_under(tmp_path)
    code, err = cli(capsys, "evaluate", "--pred", tmp_path, "--labels", labels)
    assert code == 2 and "already exists" in err
    assert files_under(tmp_path) == before


def test_outputs_on_a_read_only_file_system(dataset, tmp_path, capsys):
    read_only = Path("/sys/pconv3d-test/out")  # sysfs: no folder can be made there, not even by root
    try:
        read_only.parent.mkdir()
    except OSError:
        pass
    else:
        read_only.parent.rmdir()
        pytest.skip("/sys takes new folders on this machine")
    for argv in (["data", "--kind", "phantom", "--size", "16", "--output", read_only],
                 ["evaluate", "--pred", dataset / "labelsTs", "--labels", dataset / "labelsTs", "--output", read_only]):
        code, err = cli(capsys, *argv)
        assert code == 2 and "/sys" in err, argv


def test_four_channel_image_and_zero_affine(dataset, trained, tmp_path, capsys):
    image = _image(dataset)
    data = np.asarray(nib.load(image).dataobj, dtype=np.float32)
    four = _write_like(tmp_path / "in" / "four.nii.gz", image, np.stack([data] * 4, -1))
    code, err = cli(capsys, "infer", "--model", trained / "best.pt", "--input", four, "--output", tmp_path / "o")
    assert code == 2 and "four.nii.gz" in err and "4 channel(s)" in err and "takes 1" in err
    header = nib.Nifti1Header()  # an sform of zeros, as a broken converter writes it
    header.set_data_shape(data.shape)
    header.set_data_dtype(np.float32)
    for row in ("srow_x", "srow_y", "srow_z"):
        header[row] = 0
    header["sform_code"], header["qform_code"] = 1, 0
    flat = tmp_path / "in" / "flat.nii.gz"
    nib.save(nib.Nifti1Image(data, None, header=header), flat)
    code, err = cli(capsys, "infer", "--model", trained / "best.pt", "--input", flat, "--output", tmp_path / "o")
    assert code == 2 and "flat.nii.gz" in err and "affine" in err
    assert not (tmp_path / "o").exists()


def test_ctrl_c_is_one_line_and_exit_130(dataset, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--data", str(dataset), "--output", str(out),
           "--epochs", "50", *TINY, "--progress", "true", "--val_interval", "100"]  # progress as log lines
    # a shell's background job ignores SIGINT, and children inherit that: give this one a terminal's default
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "last.pt").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    log, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[:4000]
    assert err.strip().splitlines() == ["pconv3d train: interrupted"]
    assert "Traceback" not in log and "Interrupted" not in log, log[-4000:]
    load_checkpoint(out / "last.pt")  # what was saved is whole


def test_an_interrupt_that_lands_in_a_finalizer_is_not_lost(capsys):
    from pipelines.errors import run_reporting_errors

    class Thing:
        pass

    def command() -> int:
        thing = Thing()
        ref = weakref.ref(thing, lambda _: os.kill(os.getpid(), signal.SIGINT))  # Ctrl-C inside the callback
        del thing
        time.sleep(30)  # the interrupt must still arrive here
        return 0 if ref is not None else 1

    start = time.perf_counter()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even under a background job
    try:
        assert run_reporting_errors("x", command) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.perf_counter() - start < 20
    assert capsys.readouterr().err.strip() == "pconv3d x: interrupted"


def test_a_floating_mask_of_half_weights_is_valid_data(dataset, trained_partial, tmp_path, capsys):
    """A mask of 0.5 everywhere is data of weight 0.5, not 'missing': partial convolutions renormalize a uniform
    weight away, so the segmentation equals the one without a mask (it once came out all background)."""
    image = _image(dataset)
    half = _write_like(tmp_path / "half.nii.gz", image, np.full(nib.load(image).shape, 0.5, np.float32))
    args = ["infer", "--model", trained_partial / "best.pt", "--input", image, "--progress", "false"]
    assert cli(capsys, *args, "--output", tmp_path / "plain")[0] == 0
    assert cli(capsys, *args, "--mask", half, "--output", tmp_path / "half")[0] == 0
    name = image.name.replace(".nii.gz", "_seg.nii.gz")
    plain, weighted = (np.asarray(nib.load(tmp_path / d / name).dataobj) for d in ("plain", "half"))
    assert plain.any() and np.array_equal(plain, weighted)
