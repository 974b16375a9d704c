"""A change to the default network or fill, checked on the study's validation cases (never its test cases):
two methods' trainings, one per seed, scored on the validation cases with the study's holes, and their
paired difference (same case, seed and holes; t-interval over cases: with 2 validation cases, a wide one).

Run after the study has trained both (``benchmarks.robustness_study --methods ...``)::

    python -m benchmarks.check_validation --output /work/study24 \\
        --a gated tune/gated/often_all_axes final/gated/seed1 final/gated/seed2 \\
        --b gated_light final/gated_light/seed0 final/gated_light/seed1 final/gated_light/seed2

Runs are folders under ``--output``, one per seed, in seed order; scores are kept in each run (as the study
keeps them) and reused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.paired import paired_difference
from benchmarks.study import FRACTIONS, PATTERNS, _grid, _rows, score_network, study_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True, help="the study's output folder")
    p.add_argument("--a", nargs="+", required=True, metavar=("NAME", "RUN"), help="the reference: a name, then its runs")
    p.add_argument("--b", nargs="+", required=True, metavar=("NAME", "RUN"), help="the change: a name, then its runs")
    args = p.parse_args()
    out = Path(args.output)
    _, num_classes, validation, _ = study_data(out)
    rows, names = [], []
    for name, *runs in (args.a, args.b):
        names.append(name)
        for seed, run in enumerate(runs):
            scores = score_network(out / run, validation, list(PATTERNS), list(FRACTIONS), [32, 32, 32], num_classes,
                                   "validation")
            rows += _rows(name, seed, out / run, scores)
    holed = [f for f in FRACTIONS if f > 0]
    print(f"| on validation cases | {names[0]} | {names[1]} | {names[1]} - {names[0]}, paired |\n|---|---|---|---|")
    for label, fractions in (("nothing missing", [0.0]), ("25-75 %", holed), ("all", list(FRACTIONS))):
        a, b = (_grid(rows, n, "dice", list(PATTERNS), fractions) for n in names)
        print(f"| {label} | {np.nanmean(a):.3f} | {np.nanmean(b):.3f} | {paired_difference(b, a)} |")


if __name__ == "__main__":
    main()
