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


def test_monai_verifies_exports_and_runs_the_run_folder(trained, dataset, tmp_path):
    """MONAI's bundle tools, as `python -m monai.bundle verify_net_in_out / ckpt_export / run` call them, in one
    process (one start-up, not three)."""
    meta, config = (str(trained / "configs" / n) for n in ("metadata.json", "inference.yaml"))
    exported, out = tmp_path / "model.ts", tmp_path / "pred"
    script = "\n".join([
        "from monai.bundle import ckpt_export, run, verify_net_in_out",
        f"verify_net_in_out('network_def', meta_file={meta!r}, config_file={config!r})",
        f"ckpt_export('network_def', filepath={str(exported)!r}, ckpt_file={str(trained / MODEL)!r}, meta_file={meta!r}, "
        f"config_file={config!r})",
        f"run(config_file={config!r}, bundle_root={str(trained)!r}, input={str(dataset / 'imagesTs')!r}, "
        f"output_dir={str(out)!r}, progress=False)",
    ])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scripted = torch.jit.load(str(exported))
    eager = network_from_checkpoint(trained / "best.pt")
    channels = load_checkpoint(trained / "best.pt")["network_def"]["in_channels"]
    x = torch.randn(1, channels, 32, 32, 32)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        torch.testing.assert_close(scripted(x), eager(x))
    assert len(list(out.glob("*_seg.nii.gz"))) == len(list((dataset / "imagesTs").iterdir()))
