"""Why a PartialUNet trails a UNet on complete volumes: the same weights in either architecture.

On a complete volume every voxel is valid, so after the first convolution every mask is 1 and the masked norms
equal the plain ones: a ``PartialUNet`` then differs from a ``UNet`` with its weights only where a window
reaches past the volume or patch border (partial padding rescales it; ``UNet`` pads zeros). This script puts
each trained network's weights into the other architecture and scores both on the complete validation cases,
so the border handling is measured apart from training (the design screen's runs, :mod:`benchmarks.screen_designs`).

Run: ``python -m benchmarks.ablate_complete [--output /work/screen]`` (seconds; needs the screen's
``unet_interp_noholes`` and ``partial_noholes`` runs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from pconv3d.networks import PartialUNet
from pipelines.evaluation import score_case
from pipelines.handlers import BEST, load_checkpoint
from benchmarks.study import hole_transforms, study_data
from pconv3d.transforms.recipes import IMAGE, LABEL


@torch.no_grad()
def mean_dice(network: torch.nn.Module, cases: list[dict], num_classes: int) -> float:
    transform = hole_transforms("random", 0.0, None, False)
    scores = []
    for case in cases:
        d = transform(dict(case))
        logits = sliding_window_inference(d[IMAGE][None].as_tensor(), [32, 32, 32], 4, network, overlap=0.25)
        scores.append(score_case(logits[0].argmax(0), d[LABEL][0].as_tensor(), num_classes)["dice"])
    return float(np.nanmean(scores))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="outputs/screen")
    args = p.parse_args()
    out = Path(args.output)
    _, num_classes, validation, _ = study_data(out)
    print("| trained as | weights in UNet | weights in PartialUNet |\n|---|---|---|")
    for run in ("unet_interp_noholes", "partial_noholes"):
        ckpt = load_checkpoint(out / run / BEST)
        kwargs = {k: v for k, v in ckpt["network_def"].items() if k != "_target_"}
        scores = []
        for arch in (UNet, PartialUNet):
            net = arch(**kwargs)
            net.load_state_dict(ckpt["network"])
            scores.append(mean_dice(net.eval(), validation, num_classes))
        print(f"| {run} | {scores[0]:.4f} | {scores[1]:.4f} |")


if __name__ == "__main__":
    main()
