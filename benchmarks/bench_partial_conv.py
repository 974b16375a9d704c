"""Side-by-side timing of nn.Conv3d, pconv3d.PartialConv3d and the reference-algorithm baseline.

Run: ``python -m benchmarks.bench_partial_conv [--reps 9] [--device cuda] [--reference-module PATH]``

Every case builds the layers with identical weights and times them interleaved in one process, so the
ratios compare like with like. Each partial-convolution call gets a fresh mask tensor (cloned outside
the timed region), as a network's first layer does, so nothing is known about it (the baseline's
statistics kept on the module are recomputed for it too). The input requires grad, as it does for every
layer of a network but the first. Prints one Markdown table of medians and ratios to ``nn.Conv3d``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn

from tests.reference_baseline import ReferencePartialConv3d
from pconv3d import PartialConv3d

# (batch, in, out, size, multi_channel)
CASES = [
    (2, 16, 16, 64, False),
    (1, 32, 32, 48, False),
    (2, 32, 64, 32, False),
    (2, 16, 16, 64, True),
    (1, 32, 32, 48, True),
    (2, 32, 64, 32, True),
]


def load_external(path: str) -> type[nn.Module]:
    spec = importlib.util.spec_from_file_location("external_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "PartialConv3d"):
        raise SystemExit(f"--reference-module {path}: the file defines no PartialConv3d")
    return module.PartialConv3d


def make_mask(n: int, c: int, size: int, seed: int) -> torch.Tensor:
    """Random holes plus two dropped slices, the shape of real missing data."""
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(n, c, size, size, size, generator=g) > 0.1).float()
    m[:, :, size // 3] = 0
    m[:, :, size // 2] = 0
    return m


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a timer on the host sees only the launch otherwise)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fns: dict[str, Callable[[torch.Tensor], None]], masks: list[torch.Tensor], reps: int) -> dict[str, float]:
    """Median seconds per call, the functions interleaved round-robin after one warm-up each."""
    device = masks[0].device
    for fn in fns.values():
        fn(masks[0].clone())
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(reps):
        for name, fn in fns.items():
            m = masks[r % len(masks)].clone()  # a fresh tensor every call
            synchronize(device)
            t0 = time.perf_counter()
            fn(m)
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def run_case(n, cin, cout, size, multi, reps, external, device):
    torch.manual_seed(0)
    conv = nn.Conv3d(cin, cout, 3, padding=1)
    layers = {"Conv3d": conv, "PartialConv3d": PartialConv3d(cin, cout, 3, padding=1, multi_channel=multi),
              "baseline": ReferencePartialConv3d(cin, cout, 3, padding=1, multi_channel=multi)}
    if external is not None:
        layers["external"] = external(cin, cout, 3, padding=1, multi_channel=multi)
    for layer in layers.values():
        layer.load_state_dict(conv.state_dict(), strict=False)
        layer.to(device)
    x = torch.randn(n, cin, size, size, size, device=device, requires_grad=True)
    masks = [make_mask(n, cin if multi else 1, size, s).to(device) for s in range(3)]
    g = torch.randn(n, cout, size, size, size, device=device)

    def fwd(layer):
        def f(m):
            with torch.no_grad():
                layer(x) if layer is conv else layer(x, m)
        return f

    def fwd_bwd(layer):
        def f(m):
            out = layer(x) if layer is conv else layer(x, m)
            out.backward(g)
        return f

    res_f = time_calls({k: fwd(v) for k, v in layers.items()}, masks, reps)
    res_b = time_calls({k: fwd_bwd(v) for k, v in layers.items()}, masks, reps)
    return res_f, res_b


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--reference-module", help="file defining PartialConv3d with the reference interface")
    p.add_argument("--quick", action="store_true", help="small sizes, to check the script runs")
    p.add_argument("--device", type=torch.device, default=torch.device("cpu"), help="cpu, cuda, cuda:1 ...")
    args = p.parse_args()
    external = load_external(args.reference_module) if args.reference_module else None
    cases = [(n, ci, co, 16, mc) for n, ci, co, _, mc in CASES[:2]] if args.quick else CASES
    where = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {args.device}, {where}, median of {args.reps} calls, ms")
    cols = ["case", "pass", "Conv3d", "PartialConv3d", "ours/Conv3d", "baseline", "baseline/Conv3d", "baseline/ours"]
    if external is not None:
        cols += ["external", "external/ours"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for n, ci, co, s, mc in cases:
        res = run_case(n, ci, co, s, mc, args.reps, external, args.device)
        label = f"N={n}, {ci}→{co}, {s}³, {'multi-channel' if mc else 'single-channel'} mask"
        for name, r in zip(("fwd", "fwd+bwd"), res):
            row = [label, name, f"{r['Conv3d'] * 1e3:.1f}", f"{r['PartialConv3d'] * 1e3:.1f}",
                   f"{r['PartialConv3d'] / r['Conv3d']:.2f}×", f"{r['baseline'] * 1e3:.1f}",
                   f"{r['baseline'] / r['Conv3d']:.2f}×", f"{r['baseline'] / r['PartialConv3d']:.2f}×"]
            if external is not None:
                row += [f"{r['external'] * 1e3:.1f}", f"{r['external'] / r['PartialConv3d']:.2f}×"]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
