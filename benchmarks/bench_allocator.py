"""How much of a large ``nn.Conv3d`` call is the allocator: glibc's defaults against glibc keeping freed memory.

Run: ``python -m benchmarks.bench_allocator [--rounds 3] [--reps 9]``

glibc reads its tunables once, at process start, so each setting runs in its own child process; the two
kinds of child alternate, ``--rounds`` times each, and the script prints one table with the medians and
their ratio. The layer and sizes are those of the first case of ``benchmarks.bench_partial_conv``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch
import torch.nn as nn

from benchmarks.bench_partial_conv import time_calls

KEEP_FREED = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"
SETTINGS = {"glibc defaults": None, f"GLIBC_TUNABLES={KEEP_FREED}": KEEP_FREED}


def child(reps: int) -> None:
    """Median seconds of a forward and a forward+backward ``nn.Conv3d`` call (N=2, 16→16, 64³)."""
    torch.manual_seed(0)
    conv = nn.Conv3d(16, 16, 3, padding=1)
    x = torch.randn(2, 16, 64, 64, 64, requires_grad=True)
    g = torch.randn(2, 16, 64, 64, 64)

    def fwd(_):
        with torch.no_grad():
            conv(x)

    def fwd_bwd(_):
        conv(x).backward(g)

    print(json.dumps(time_calls({"fwd": fwd, "fwd+bwd": fwd_bwd}, [torch.empty(0)], reps)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.reps)
        return
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, tunables in SETTINGS.items():
            env = dict(os.environ)
            env.pop("GLIBC_TUNABLES", None)
            if tunables is not None:
                env["GLIBC_TUNABLES"] = tunables
            out = subprocess.run([sys.executable, "-m", "benchmarks.bench_allocator", "--child", "--reps", str(args.reps)],
                                 env=env, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    default, kept = SETTINGS
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; nn.Conv3d N=2, 16→16, 64³, k=3; "
          f"median over {args.rounds} alternating processes of the per-process medians of {args.reps} calls, ms")
    print(f"| pass | {default} | keeping freed memory | defaults / kept |")
    print("|---|---:|---:|---:|")
    for what in ("fwd", "fwd+bwd"):
        a = statistics.median(r[what] for r in runs[default])
        b = statistics.median(r[what] for r in runs[kept])
        print(f"| {what} | {a * 1e3:.1f} | {b * 1e3:.1f} | {a / b:.2f}× |")


if __name__ == "__main__":
    main()
