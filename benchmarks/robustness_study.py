"""Missing-data robustness study: PartialUNet + mask vs MONAI UNet (zero-filled, interpolated).

Run: ``python -m benchmarks.robustness_study [--output outputs/study] [--epochs 40]`` (same as
``pconv3d evaluate --study``). Trains three models, so it takes a while on a CPU; see pipelines/study.py.
"""

from __future__ import annotations

import argparse

from pipelines.study import run_study

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="outputs/study")
    p.add_argument("--epochs", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    run_study(args.output, epochs=args.epochs, seed=args.seed)
