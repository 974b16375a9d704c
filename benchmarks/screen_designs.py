"""Design screen on the study's validation cases (never its test cases): one training per variant and seed,
Dice with nothing missing and averaged over the study's patterns at 25-75 % missing. A change to the default is
then checked against the default's own trainings, paired, by ``benchmarks.check_validation``.

Run: ``python -m benchmarks.screen_designs [--output /work/screen] [--epochs 250] [--only NAME ...] [--seeds 0 1 2]``.
About 70-140 s per training on 2 CPU cores at 250 epochs; trainings and scores are reused on a rerun.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.study import (CANDIDATES, FRACTIONS, GATED, METHODS, PARTIAL, PATTERNS, UNET, method, score_network,
                              study_data, train)

# name -> training-config overrides; every variant spells out its input recipe (see benchmarks.study.METHODS)
VARIANTS: dict[str, dict] = {
    "unet_interp": METHODS["unet_interp"].overrides,
    "unet_interp_noholes": {**METHODS["unet_interp"].overrides, "simulate_holes": False},
    "unet_interp_channel": METHODS["unet_interp_channel"].overrides,
    "partial": METHODS["partial"].overrides,
    "partial_noholes": {**METHODS["partial"].overrides, "simulate_holes": False},
    "partial_soft": METHODS["partial_soft"].overrides,
    "partial_soft_channel": method(PARTIAL, mask_input=True, fill="soft", mask_as_channel=True),
    "gated_interp": method(GATED, fill="interpolate", mask_as_channel=True),
    "gated_soft": METHODS["gated"].overrides,
    "unet_soft_channel": method(UNET, fill="soft", mask_as_channel=True),
}
# GatedUNet with holes simulated less often: does the gap with nothing missing close, and what do the holes lose?
VARIANTS["gated_half"] = {**VARIANTS["gated_soft"], "drop_slices": {"prob": 0.5, "axes": [0, 1, 2], "fraction": [0.1, 0.5]},
                          "mask_regions": {"prob": 0.3, "num_regions": [1, 3], "size": [0.1, 0.35]}}
VARIANTS["gated_rarely"] = {**VARIANTS["gated_soft"], **CANDIDATES["rarely, all axes"]}
# GatedUNet seeing each patch holed and complete in one step, the holed prediction pulled toward the complete one
VARIANTS["gated_consistency"] = {**VARIANTS["gated_soft"], "consistency": {"weight": 1.0}}
# the default trained 1.5x longer: consistency training's wall time, the equal-time control
VARIANTS["gated_soft_1.5x"] = {**VARIANTS["gated_soft"], "epochs_scale": 1.5}

# the default started from the complete-volume UNet of the same seed (OUTPUT/unet_interp_noholes/seedN, trained
# first) and fine-tuned with holes, for 0.3x the epochs (the two trainings together take about the default's
# time) or 0.5x
VARIANTS["gated_from_unet_0.3x"] = {**METHODS["gated"].overrides, **CANDIDATES["often, all axes"],
                                    "init_from_method": "unet_interp_noholes", "epochs_scale": 0.3}
VARIANTS["gated_from_unet_0.5x"] = {**VARIANTS["gated_from_unet_0.3x"], "epochs_scale": 0.5}
# the default as configs/train.yaml trains it (subnormal floats computed as 0 on the CPU), and with the CPU computing
# them: does flushing them change what the network learns? (train each in its own process, as `pconv3d train` runs:
# the flag reaches only the CPU threads started after it is set)
VARIANTS["gated_default"] = {**METHODS["gated"].overrides, **CANDIDATES["often, all axes"], "flush_denormal": True}
VARIANTS["gated_default_subnormals"] = {**VARIANTS["gated_default"], "flush_denormal": False}
# the default three quarters as wide (channels 12-96): about the plain UNet's parameters and convolution work
VARIANTS["gated_narrow12"] = {**VARIANTS["gated_default"], "network_def#channels": [12, 24, 48, 96]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="outputs/screen")
    p.add_argument("--epochs", type=int, default=250)
    p.add_argument("--only", nargs="+", default=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="training seeds, each trained into OUTPUT/VARIANT/seedN")
    args = p.parse_args()
    out = Path(args.output)
    data, num_classes, validation, _ = study_data(out)
    print(f"| variant | seed | 0 % | 25-75 % | " + " | ".join(PATTERNS) + " |", flush=True)
    for name, seed in ((name, seed) for name in args.only for seed in args.seeds):
        run = train(data, out / name / f"seed{seed}", args.epochs, seed, VARIANTS[name])
        rows = score_network(run, validation, list(PATTERNS), list(FRACTIONS), [32, 32, 32], num_classes,
                             "validation")
        mean = lambda sel: float(np.nanmean([r["dice"] for r in rows if sel(r)]))  # noqa: E731
        per = [mean(lambda r, q=q: r["pattern"] == q and r["missing"] > 0) for q in PATTERNS]
        print(f"| {name} | {seed} | {mean(lambda r: r['missing'] == 0):.3f} | {mean(lambda r: r['missing'] > 0):.3f} | "
              + " | ".join(f"{v:.3f}" for v in per) + " |", flush=True)


if __name__ == "__main__":
    main()
