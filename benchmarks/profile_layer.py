"""Where a lone partial convolution spends its time beyond the convolution, op by op (torch.profiler).

Run: ``python -m benchmarks.profile_layer [--size 64] [--batch 2] [--channels 16] [--backward] [--device cuda]``;
``--network`` profiles ``PartialUNet`` against MONAI ``UNet`` (channels 16-128, one residual unit) instead, and
``--compile`` runs both through ``torch.compile`` (each of inductor's generated kernels then shows as its own
row, and a summary splits the time per call into convolutions, generated kernels and the mask-statistics
operator).

One ``PartialConv3d(k=3, pad=1)`` against the ``nn.Conv3d`` it wraps, each call given a fresh single-channel
mask (random holes plus two dropped slices, as ``benchmarks/bench_partial_conv.py``). Prints, for both layers,
the profiler's table of aten ops by self time (summed over ``--reps`` calls), so that every pass over the
mask, the input and the output shows as its own row, with its share of the layer's time.
"""

from __future__ import annotations

import argparse

import torch
import torch._inductor.config
import torch.nn as nn
from monai.networks.nets import UNet
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_partial_conv import make_mask, synchronize
from pconv3d import PartialConv3d
from pconv3d.networks import PartialUNet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--backward", action="store_true", help="forward and backward (the input requires grad)")
    p.add_argument("--device", type=torch.device, default=torch.device("cpu"))
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--network", action="store_true", help="PartialUNet against MONAI UNet instead of one layer")
    p.add_argument("--compile", action="store_true", help="torch.compile both (after a warm-up that compiles)")
    args = p.parse_args()
    torch.manual_seed(0)
    c, s, n = args.channels, args.size, args.batch
    if args.network:
        kw = dict(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                  num_res_units=1)
        conv, partial, c_in, c_out = UNet(**kw), PartialUNet(**kw), 1, 2
        conv.train(args.backward), partial.train(args.backward)
    else:
        conv, partial, c_in, c_out = nn.Conv3d(c, c, 3, padding=1), PartialConv3d(c, c, 3, padding=1), c, c
    partial.load_state_dict(conv.state_dict())
    conv, partial = conv.to(args.device), partial.to(args.device)
    if args.compile:
        torch._inductor.config.cpp.enable_kernel_profile = True  # each generated kernel its own profiler row
        conv, partial = torch.compile(conv), torch.compile(partial)
    x = torch.randn(n, c_in, s, s, s, device=args.device, requires_grad=args.backward)
    g = torch.randn(n, c_out, s, s, s, device=args.device)
    masks = [make_mask(n, 1, s, seed).to(args.device) for seed in range(3)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.type == "cuda" else [])
    sort = "self_cuda_time_total" if args.device.type == "cuda" else "self_cpu_time_total"

    names = ("MONAI UNet", "PartialUNet") if args.network else ("nn.Conv3d", "PartialConv3d")
    for name, call in ((names[0], lambda m: conv(x)), (names[1], lambda m: partial(x, m))):
        def step(m: torch.Tensor) -> None:
            with torch.set_grad_enabled(args.backward):
                out = call(m)
                if args.backward:
                    out.backward(g)

        for r in range(2):
            step(masks[r % 3].clone())  # warm-up
        synchronize(args.device)
        with profile(activities=activities) as prof:
            for r in range(args.reps):
                step(masks[r % 3].clone())  # a fresh mask every call
            synchronize(args.device)
        what = f"{'forward+backward' if args.backward else 'forward'}{', compiled' if args.compile else ''}"
        print(f"## {name}: {n}x{c_in}x{s}³, {what}, {args.reps} calls\n")
        print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))
        if args.compile:
            print(where_time_goes(prof, args.reps))


def where_time_goes(prof: profile, reps: int) -> str:
    """Milliseconds per call by kind: convolutions, inductor's generated kernels, the mask-statistics operator
    (``pconv3d::window_stats``, with the aten ops it runs) and the compiled graph in all (CPU times)."""
    kinds = {"convolutions": 0.0, "generated kernels": 0.0, "pconv3d::window_stats": 0.0, "compiled graph in all": 0.0}
    for e in prof.key_averages():
        if e.key in ("aten::mkldnn_convolution", "aten::_convolution", "aten::slow_conv3d_forward"):
            kinds["convolutions"] += e.self_cpu_time_total
        elif e.key.startswith("graph_"):  # one row per kernel (inductor's cpp.enable_kernel_profile)
            kinds["generated kernels"] += e.self_cpu_time_total
        elif e.key == "pconv3d::window_stats":
            kinds["pconv3d::window_stats"] += e.cpu_time_total
        elif e.key.startswith("## Call CompiledFxGraph"):
            kinds["compiled graph in all"] += e.cpu_time_total
    rows = "\n".join(f"| {k} | {v / reps / 1000:.1f} |" for k, v in kinds.items())
    return f"| per call | ms |\n|---|---:|\n{rows}\n"


if __name__ == "__main__":
    main()
