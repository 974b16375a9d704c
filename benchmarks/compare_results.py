"""Two methods of a finished study compared on its test table: the paired difference (same case, seed and holes;
t-interval over cases) with nothing missing, over 25-75 % missing, on the missing voxels, on the held-out
patterns and pattern by pattern. For reporting a result, never for choosing: choices are made on validation
cases (``benchmarks.check_validation``).

Run: ``python -m benchmarks.compare_results docs/study/issue24/results.csv --a gated_from_unet:500 --b gated:1000``
(``METHOD:EPOCHS``, as the study's ``results.csv`` records them: a method trained at two budgets has two; a routed
method's rows carry the epochs of the training each comes from, so it is named by both: ``routed_from_unet:1000,500``).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from benchmarks.paired import PairedDifference
from benchmarks.study import ALL_PATTERNS, FRACTIONS, paired_summaries


def read_rows(path: Path, spec: str) -> list[dict[str, Any]]:
    """The rows of ``METHOD:EPOCHS`` (``EPOCHS``: one value or several, comma-separated) in a study's
    ``results.csv``, typed as the study wrote them."""
    method, _, given = spec.partition(":")
    epochs = given.split(",")
    rows = [{**r, "seed": int(r["seed"]), "missing": float(r["missing"]), "dice": float(r["dice"]),
             "dice_missing": float(r["dice_missing"])}
            for r in csv.DictReader(path.open()) if r["method"] == method and r["epochs"] in epochs]
    if not rows:
        raise SystemExit(f"{path}: no rows of method {method!r} with epochs {given!r} (expected METHOD:EPOCHS)")
    return rows


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, PairedDifference]:
    """``a - b``, paired, by the study's summaries (:func:`benchmarks.study.paired_summaries`) over all its patterns."""
    rows = [{**r, "method": "a"} for r in a] + [{**r, "method": "b"} for r in b]
    return paired_summaries(rows, "a", "b", list(ALL_PATTERNS), [f for f in FRACTIONS if f > 0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="a study's results.csv")
    p.add_argument("--a", required=True, metavar="METHOD:EPOCHS")
    p.add_argument("--b", required=True, metavar="METHOD:EPOCHS")
    args = p.parse_args()
    print(f"| {args.a} minus {args.b}, paired | mean [95 % interval] |\n|---|---|")
    for name, diff in compare(read_rows(args.results, args.a), read_rows(args.results, args.b)).items():
        print(f"| {name} | {diff} |")


if __name__ == "__main__":
    main()
