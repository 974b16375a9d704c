"""Missing-data study: every method of benchmarks/study.py, tuned on validation cases, 3 seeds, paired intervals.

Run: ``python -m benchmarks.robustness_study [--output outputs/study] [--epochs 250] [--methods NAME ...]
[--budget 4 --budget-methods NAME NAME]``. About an hour on 2 CPU cores at 250 epochs; stop and start it again at
will.
"""

from __future__ import annotations

import argparse

from benchmarks.study import ALL_PATTERNS, CANDIDATES, METHODS, run_study

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="outputs/study")
    p.add_argument("--epochs", type=int, default=250)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                   help="a subset of the methods (the larger-budget stage takes the best of them and the best baseline)")
    p.add_argument("--patterns", nargs="+", choices=list(ALL_PATTERNS), default=list(ALL_PATTERNS),
                   help="test hole patterns (the held-out ones are reported apart and never choose a setting)")
    p.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES),
                   help="the training settings each method is tuned over (where it allows them)")
    p.add_argument("--budget", type=int, default=2, help="the last stage's multiple of --epochs")
    p.add_argument("--budget-methods", nargs="+", choices=list(METHODS),
                   help="the methods trained at the larger budget (default: the best method and the best baseline)")
    p.add_argument("--budget-seeds", type=int, nargs="+", help="the larger budget's seeds (default: --seeds)")
    args = p.parse_args()
    run_study(args.output, epochs=args.epochs, seeds=args.seeds, methods=args.methods, patterns=args.patterns,
              candidates=args.candidates, budget=args.budget, budget_methods=args.budget_methods,
              budget_seeds=args.budget_seeds)
