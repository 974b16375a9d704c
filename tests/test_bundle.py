"""A training run folder is a MONAI bundle: MONAI's own bundle tools verify, export and run it."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from pipelines.handlers import load_checkpoint, network_from_checkpoint
from pipelines.model_bundle import MODEL
from tests.cli_helpers import ROOT

BUNDLE_FILES = ["LICENSE", "configs/inference.yaml", "configs/metadata.json", "configs/train.yaml",
                "docs/README.md", "models/model.pt"]


def test_a_run_folder_holds_the_bundle_files_and_a_plain_state_dict(trained):
    for name in BUNDLE_FILES:
        assert (trained / name).is_file(), name
    state = torch.load(trained / MODEL, weights_only=True)
    best = load_checkpoint(trained / "best.pt")["network"]
    assert state.keys() == best.keys() and all(torch.equal(state[k], best[k]) for k in state)
    meta = json.loads((trained / "configs" / "metadata.json").read_text())
    network_def = load_checkpoint(trained / "best.pt")["network_def"]
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == network_def["in_channels"]
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == json.loads(
        (ROOT / "configs" / "metadata.json").read_text())["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert network_def["_target_"].rsplit(".", 1)[-1] in meta["description"]


def test_monai_verifies_exports_and_the_export_matches_the_eager_network(trained, tmp_path):
    configs = [str(trained / "configs" / n) for n in ("metadata.json", "inference.yaml")]
    bundle = [sys.executable, "-m", "monai.bundle"]
    verify = subprocess.run([*bundle, "verify_net_in_out", "network_def", "--meta_file", configs[0],
                             "--config_file", configs[1]], capture_output=True, text=True, cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr[-2000:]
    exported = tmp_path / "model.ts"
    export = subprocess.run([*bundle, "ckpt_export", "network_def", "--filepath", str(exported), "--ckpt_file",
                             str(trained / MODEL), "--meta_file", configs[0], "--config_file", configs[1]],
                            capture_output=True, text=True, cwd=tmp_path)
    assert export.returncode == 0, export.stderr[-2000:]
    scripted = torch.jit.load(str(exported))
    eager = network_from_checkpoint(trained / "best.pt")
    channels = load_checkpoint(trained / "best.pt")["network_def"]["in_channels"]
    x = torch.randn(1, channels, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x))


def test_monai_runs_the_bundle_inference_on_volumes(trained, dataset, tmp_path):
    out = tmp_path / "pred"
    run = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                          str(trained / "configs" / "inference.yaml"), "--bundle_root", str(trained),
                          "--input", str(dataset / "imagesTs"), "--output_dir", str(out), "--progress", "false"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(list(out.glob("*_seg.nii.gz"))) == len(list((dataset / "imagesTs").iterdir()))
