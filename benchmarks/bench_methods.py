"""What each method of the missing-data study costs: a training step, sliding-window inference on a study
volume, and the input preparation (hole filling), side by side in one run on the study's configurations.

Run: ``python -m benchmarks.bench_methods [--reps 7] [--device cpu]`` (about a minute on 2 CPU cores). Never run
it while a study or the tests run: it times.
"""

from __future__ import annotations

import argparse
import time

import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from pconv3d.losses import MaskedDiceCELoss
from pconv3d.networks import GatedUNet, PartialUNet
from pconv3d.transforms import InterpolateMissing

ARGS = dict(spatial_dims=3, out_channels=4, strides=(2, 2, 2), num_res_units=1)
# name -> (network class, input channels, channels, takes the mask as an argument)
METHODS = {
    "UNet (zero-filled or interpolated)": (UNet, 1, (16, 32, 64, 128), False),
    "UNet + mask channel": (UNet, 2, (16, 32, 64, 128), False),
    "UNet, GatedUNet's size, + channel": (UNet, 2, (22, 44, 88, 176), False),
    "PartialUNet + mask": (PartialUNet, 1, (16, 32, 64, 128), True),
    "GatedUNet + channel": (GatedUNet, 2, (16, 32, 64, 128), False),
}


def median_seconds(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--device", type=torch.device, default=torch.device("cpu"))
    args = p.parse_args()
    dev = args.device
    torch.manual_seed(0)
    patch, volume = torch.randn(4, 2, 32, 32, 32, device=dev), torch.randn(1, 2, 48, 48, 48, device=dev)
    mask = (torch.rand(4, 1, 32, 32, 32, device=dev) > 0.3).float()
    vmask = (torch.rand(1, 1, 48, 48, 48, device=dev) > 0.3).float()
    label = torch.randint(0, 4, (4, 1, 32, 32, 32), device=dev)
    loss = MaskedDiceCELoss()
    rows = []
    for name, (cls, channels, widths, masked) in METHODS.items():
        net = cls(in_channels=channels, channels=widths, **ARGS).to(dev)
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        x, v = patch[:, :channels], volume[:, :channels]
        extra, vextra = ({"condition": mask}, {"condition": vmask}) if masked else ({}, {})

        def step():
            opt.zero_grad()
            loss(net(x, **extra), label).backward()
            opt.step()

        def infer():
            with torch.no_grad():
                sliding_window_inference(v, (32, 32, 32), 4, net.eval(), overlap=0.25, **vextra)
            net.train()

        params = sum(q.numel() for q in net.parameters())
        rows.append((name, params, median_seconds(step, args.reps), median_seconds(infer, args.reps)))
    base_step, base_infer = rows[0][2], rows[0][3]
    print("| method | parameters | training step (batch 4, 32³) | inference (48³ volume) |\n|---|---|---|---|")
    for name, params, step_s, infer_s in rows:
        print(f"| {name} | {params / 1e6:.2f} M | {1e3 * step_s:.0f} ms ({step_s / base_step:.2f}×) | "
              f"{1e3 * infer_s:.0f} ms ({infer_s / base_infer:.2f}×) |")
    image = torch.randn(1, 48, 48, 48)
    slices = torch.ones(1, 48, 48, 48)
    slices[..., ::2] = 0
    fill = InterpolateMissing(soft=True)
    print(f"\nhole filling (InterpolateMissing, soft, half the slices of a 48³ volume): "
          f"{1e3 * median_seconds(lambda: fill(image * slices, slices), args.reps):.0f} ms per volume")


if __name__ == "__main__":
    main()
