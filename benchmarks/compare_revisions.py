"""Before and after a change: the operator, a network and the hole filling timed from two checkouts of the
project, side by side in one run (issue 26: the mask core and transforms moved, and nothing may get slower;
issue 25: the fill made cheaper).

Run: ``python -m benchmarks.compare_revisions BEFORE_DIR AFTER_DIR [--reps 5] [--cases operator fill argmax]``, each
directory a checkout (``git worktree add /tmp/before REV``). Each round runs one child process per checkout, the
order swapped every other round so that drift favours neither; a child imports ``pconv3d`` from its checkout and
times, after a warm-up:

- ``operator``: ``PartialConv3d`` forward and backward with a fresh mask per call (the cases of
  ``benchmarks/bench_partial_conv.py``) and a ``PartialUNet`` training step (batch 2 of 64³, the configs' channels);
- ``fill``: ``InterpolateMissing`` with and without ``soft`` (the default's and the plain recipe's fill) on a volume of
  the MNI grid (197x233x189) with 30 % of its axial slices missing (what ``pconv3d infer`` meets) and with 10 % of
  the slices of each axis missing, and on a 32³ patch with missing slices and a box (training's holes);
- ``argmax``: the class indices step of the checkout's ``configs/inference.yaml`` (its ``AsDiscreted``, built
  from the config's ``_target_``) on the 4 class scores of a 197x233x189 volume.

Prints the medians over rounds and the ratio after / before.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

# runs inside each checkout with the case groups as arguments: prints {case: median seconds per call}
CHILD = r"""
import json, statistics, sys, time, torch
from pconv3d import PartialConv3d
from pconv3d.networks import PartialUNet
from pconv3d.transforms import InterpolateMissing

torch.manual_seed(0)
torch.set_num_threads(torch.get_num_threads())
out = {}

def median_time(step, calls=5):
    step()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
    return statistics.median(times)

def operator_cases():
    for batch, cin, cout, size, multi in [(2, 16, 16, 64, False), (1, 32, 32, 48, False), (2, 32, 64, 32, False),
                                          (2, 16, 16, 64, True), (1, 32, 32, 48, True), (2, 32, 64, 32, True)]:
        conv = PartialConv3d(cin, cout, 3, padding=1, multi_channel=multi, return_mask=True)
        x = torch.randn(batch, cin, size, size, size, requires_grad=True)
        mask = (torch.rand(batch, cin if multi else 1, size, size, size) > 0.3).float()
        def step():
            y, _ = conv(x, mask.clone())
            y.sum().backward()
        out[f"PartialConv3d {batch}x{cin}->{cout} {size}^3{' multi' if multi else ''}"] = median_time(step)

    net = PartialUNet(3, 1, 4, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1)
    opt = torch.optim.AdamW(net.parameters())
    x = torch.randn(2, 1, 64, 64, 64)
    mask = (torch.rand(2, 1, 64, 64, 64) > 0.3).float()
    def step():
        opt.zero_grad()
        net(x, condition=mask.clone()).sum().backward()
        opt.step()
    out["PartialUNet training step, 2x64^3"] = median_time(step)

def slices_missing(shape, fractions):
    mask = torch.ones(1, *shape)
    for axis, fraction in enumerate(fractions):
        drop = torch.randperm(shape[axis])[:int(fraction * shape[axis])]
        mask.index_fill_(1 + axis, drop, 0.0)
    return mask

def fill_cases():
    patch = slices_missing((32, 32, 32), (0.2, 0.0, 0.2))
    patch[:, 4:14, 10:20, 6:16] = 0
    fills = {"197x233x189, 30 % axial slices": slices_missing((197, 233, 189), (0, 0, 0.3)),
             "197x233x189, 10 % slices per axis": slices_missing((197, 233, 189), (0.1, 0.1, 0.1)),
             "32^3, slices and a box": patch}
    for name, mask in fills.items():
        img = torch.randn(mask.shape) * mask
        for soft in (True, False):
            fill = InterpolateMissing(soft=soft)
            out[f"InterpolateMissing(soft={soft}), {name}"] = median_time(lambda: fill(img, mask))

def argmax_cases():
    import yaml
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor
    steps = yaml.safe_load(open("configs/inference.yaml"))["postprocessing"]["transforms"]
    step = next(t for t in steps if str(t.get("_target_", "")).endswith("AsDiscreted"))
    argmax = ConfigParser({"t": {**step, "keys": "pred"}}).get_parsed_content("t")
    scores = MetaTensor(torch.randn(4, 197, 233, 189))
    case = "configs/inference.yaml's AsDiscreted(argmax=True), 4x197x233x189"
    out[case] = median_time(lambda: argmax({"pred": scores}))

for group in sys.argv[1:]:
    {"operator": operator_cases, "fill": fill_cases, "argmax": argmax_cases}[group]()
print(json.dumps(out))
"""


def run_child(checkout: str, cases: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(checkout)}
    proc = subprocess.run([sys.executable, "-c", CHILD, *cases], cwd=checkout, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{checkout}: the timing child failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--cases", nargs="+", choices=("operator", "fill", "argmax"), default=["operator"])
    args = p.parse_args()
    runs: dict[str, list[dict[str, float]]] = {args.before: [], args.after: []}
    for r in range(args.reps):
        for checkout in (args.before, args.after) if r % 2 == 0 else (args.after, args.before):
            runs[checkout].append(run_child(checkout, args.cases))
    print(f"| case | before (ms) | after (ms) | after / before |\n|---|---|---|---|")
    for case in runs[args.before][0]:
        b, a = (statistics.median(r[case] for r in runs[c]) for c in (args.before, args.after))
        print(f"| {case} | {1e3 * b:.1f} | {1e3 * a:.1f} | {a / b:.3f} |")


if __name__ == "__main__":
    main()
