"""Side-by-side training step, inference and peak memory of MONAI UNet, PartialUNet and PartialUNet on the
reference-algorithm baseline layer.

Run: ``python -m benchmarks.bench_unet [--size 64] [--batch 2] [--channels 16 32 64 128] [--reps 5] [--device cuda]
[--compile]`` (``--quick``: tiny sizes, to check the script runs). ``--compile`` times ``torch.compile`` of MONAI
``UNet`` and ``PartialUNet`` (the baseline layer is left out), after a warm-up call that compiles.

The three networks share one set of weights (loaded from the MONAI ``UNet``) and are timed interleaved
in one process, so the ratios compare like with like. The partial networks get a fresh mask tensor on
every call (random holes plus two dropped slices, cloned outside the timed region), as real inputs do. A training step is forward, cross-entropy, backward and an SGD step;
inference is a ``no_grad`` forward in eval mode. Times are medians.

The baseline network is ``PartialUNet`` built while the ``"partialconv"`` entry of MONAI's ``Conv``
factory points at :class:`tests.reference_baseline.ReferencePartialConv3d` (every partial
convolution is the baseline; the transposed ones, which the baseline has no counterpart for, stay
pconv3d's). Times are taken with the allocator as it is. Peak memory is measured in a child process: the
growth of the resident set over one call (Linux ``VmHWM``, reset before the call through
``/proc/self/clear_refs``), with glibc set to return large blocks at once so that freed tensors leave the
resident set (a setting that would slow every allocation down, hence not in the timed process). On a GPU,
peak memory is the allocator's peak over one call (``torch.cuda.max_memory_allocated``), in the timed process.
The same child reports the resident set after 5 and after 50 inference calls with fresh masks (on a GPU: the
memory allocated): anything a call leaves behind would show as growth.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import ctypes
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.networks.nets import UNet

from benchmarks.bench_partial_conv import synchronize, time_calls
from tests.reference_baseline import ReferencePartialConv3d
from pconv3d.blocks import PARTIAL_CONV
from pconv3d.masks.carrier import tensor_of
from pconv3d.networks import PartialUNet

MONAI, OURS, BASELINE = "MONAI UNet", "PartialUNet, masks", "PartialUNet on baseline layer"


class BaselineLayer(ReferencePartialConv3d):
    """The baseline layer behind the interface the partial blocks call: ``layer(x, mask)``, then
    ``layer.updated_mask(x, mask)`` (which the reference design keeps on the module from that call)."""

    def __init__(self, *args, multi_channel: bool = False, **kwargs) -> None:
        # the blocks ask for multi_channel to accept per-channel masks; the masks here are single-channel
        super().__init__(*args, multi_channel=False, **kwargs)

    def forward(self, input: torch.Tensor, mask_in: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(input, tensor_of(mask_in))

    def updated_mask(self, input: torch.Tensor, mask_in: torch.Tensor | None = None) -> torch.Tensor:
        return self.update_mask


@contextmanager
def partial_conv_layer(factory: Callable[[int], type]) -> Iterator[None]:
    """Build partial blocks on another layer class: swap the factory entry, restore it afterwards."""
    saved = Conv.components[PARTIAL_CONV]
    Conv.add_factory_callable(PARTIAL_CONV, factory)
    try:
        yield
    finally:
        Conv.components[PARTIAL_CONV] = saved


def make_mask(n: int, size: int, seed: int) -> torch.Tensor:
    """Random holes plus two dropped slices, the shape of real missing data."""
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(n, 1, size, size, size, generator=g) > 0.1).float()
    m[:, :, size // 3] = 0
    m[:, :, size // 2] = 0
    return m


# ---------------------------------------------------------------------------------------------------
# peak resident-set growth (Linux)

_libc = ctypes.CDLL(None)
_M_MMAP_THRESHOLD = -3


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak_growth(fn: Callable[[], None]) -> int:
    """Bytes the resident set grew by at its peak during ``fn()``."""
    gc.collect()
    before = _status_bytes("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    fn()
    return _status_bytes("VmHWM:") - before


# ---------------------------------------------------------------------------------------------------


def retained(fn: Callable[[torch.Tensor], None], masks: list[torch.Tensor], size: Callable[[], int]) -> tuple[int, int]:
    """``size()`` (memory in use) after 5 and after 50 calls of ``fn``, each given a fresh mask."""
    sizes = []
    for i in range(50):
        fn(masks[i % len(masks)].clone())
        if i + 1 in (5, 50):
            gc.collect()
            sizes.append(size())
    return sizes[0], sizes[1]


def cuda_peak(fn: Callable[[], None], device: torch.device) -> int:
    """Bytes the CUDA allocator's use grew by at its peak during ``fn()``."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def build(args) -> dict[str, nn.Module]:
    kw = dict(
        spatial_dims=3, in_channels=1, out_channels=2, channels=args.channels, strides=(2,) * (len(args.channels) - 1),
        num_res_units=args.num_res_units,
    )
    torch.manual_seed(0)
    nets = {MONAI: UNet(**kw), OURS: PartialUNet(**kw)}
    if not args.compile:
        with partial_conv_layer(lambda dim: BaselineLayer):
            nets[BASELINE] = PartialUNet(**kw)
    for name in nets:
        nets[name].load_state_dict(nets[MONAI].state_dict(), strict=True)
        nets[name].to(args.device)
    return nets


def step_fns(nets: dict[str, nn.Module], x: torch.Tensor, label: torch.Tensor, compile: bool = False) -> tuple[dict, dict]:
    """Per network: a training step and an inference call, each taking the mask for this call."""
    opts = {name: torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9) for name, net in nets.items()}
    calls = {name: torch.compile(net) if compile else net for name, net in nets.items()}

    def call(name: str, mask: torch.Tensor) -> torch.Tensor:
        return calls[name](x) if name == MONAI else calls[name](x, mask)

    def train(name: str) -> Callable[[torch.Tensor], None]:
        def f(mask: torch.Tensor) -> None:
            nets[name].train()
            opts[name].zero_grad(set_to_none=True)
            F.cross_entropy(call(name, mask), label).backward()
            opts[name].step()

        return f

    def infer(name: str) -> Callable[[torch.Tensor], None]:
        def f(mask: torch.Tensor) -> None:
            nets[name].eval()
            with torch.no_grad():
                call(name, mask)

        return f

    return {n: train(n) for n in nets}, {n: infer(n) for n in nets}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--num-res-units", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    p.add_argument("--device", type=torch.device, default=torch.device("cpu"), help="cpu, cuda, cuda:1 ...")
    p.add_argument("--compile", action="store_true", help="time torch.compile of each network")
    p.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)  # the child process below
    args = p.parse_args()
    if args.quick:
        args.size, args.batch, args.channels, args.reps = 16, 1, [4, 8], 1
    nets = build(args)
    x = torch.randn(args.batch, 1, args.size, args.size, args.size, device=args.device)
    label = torch.randint(0, 2, (args.batch, args.size, args.size, args.size), device=args.device)
    masks = [make_mask(args.batch, args.size, s).to(args.device) for s in range(3)]
    train, infer = step_fns(nets, x, label, args.compile)
    if args.memory_only:
        # every large block mmapped and returned on free, so the resident set follows live memory; this makes
        # every allocation page-fault, which is why the times are taken in the parent process without it
        _libc.mallopt(_M_MMAP_THRESHOLD, 1 << 16)
        for fn in (*train.values(), *infer.values()):
            fn(masks[0].clone())  # warm-up
        m_train = {k: peak_growth(lambda: fn(masks[0].clone())) for k, fn in train.items()}
        m_infer = {k: peak_growth(lambda: fn(masks[0].clone())) for k, fn in infer.items()}
        kept = {k: retained(fn, masks, lambda: _status_bytes("VmRSS:")) for k, fn in infer.items()}
        print(json.dumps({"train": m_train, "infer": m_infer, "retained": kept}))
        return
    t_train, t_infer = time_calls(train, masks, args.reps), time_calls(infer, masks, args.reps)
    if args.device.type == "cuda":
        m_train = {k: cuda_peak(lambda: fn(masks[0].clone()), args.device) for k, fn in train.items()}
        m_infer = {k: cuda_peak(lambda: fn(masks[0].clone()), args.device) for k, fn in infer.items()}
        kept = {k: retained(fn, masks, lambda: torch.cuda.memory_allocated(args.device)) for k, fn in infer.items()}
    else:
        child = subprocess.run([sys.executable, "-m", "benchmarks.bench_unet", "--memory-only", *sys.argv[1:]],
                               capture_output=True, text=True, check=True)
        memory = json.loads(child.stdout.strip().splitlines()[-1])
        m_train, m_infer, kept = memory["train"], memory["infer"], memory["retained"]

    where = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else f"{torch.get_num_threads()} threads"
    peak = "CUDA allocator peak" if args.device.type == "cuda" else "peak resident-set growth"
    print(
        f"torch {torch.__version__}, {args.device} ({where}){', compiled' if args.compile else ''}; batch {args.batch}, "
        f"1 channel, {args.size}³, channels {tuple(args.channels)}, num_res_units {args.num_res_units}; median of "
        f"{args.reps}; memory: {peak} over one call"
    )
    cols = ["network"]
    for what in ("train step (s)", "inference (s)", "train peak (MB)", "inference peak (MB)"):
        cols += [what, "× UNet"]
    print("| " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * (len(cols) - 1))
    for name in nets:
        row = [name]
        tables = ((t_train, 1, "{:.3f}"), (t_infer, 1, "{:.3f}"), (m_train, 1e-6, "{:.0f}"), (m_infer, 1e-6, "{:.0f}"))
        for table, scale, fmt in tables:
            row += [fmt.format(table[name] * scale), f"{table[name] / table[MONAI]:.2f}×"]
        print("| " + " | ".join(row) + " |")
    held = "CUDA memory allocated" if args.device.type == "cuda" else "resident set"
    print(f"\nNothing retained between calls: {held} after 5 and after 50 inference calls, each with a fresh mask")
    print("| network | after 5 (MB) | after 50 (MB) | growth (MB) |\n|---|---:|---:|---:|")
    for name, (five, fifty) in kept.items():
        print(f"| {name} | {five / 1e6:.1f} | {fifty / 1e6:.1f} | {(fifty - five) / 1e6:+.1f} |")
    if BASELINE in nets:
        print(f"\nPartialUNet vs the baseline layer: training step {t_train[BASELINE] / t_train[OURS]:.2f}× faster, "
              f"inference {t_infer[BASELINE] / t_infer[OURS]:.2f}× faster.")


if __name__ == "__main__":
    main()
