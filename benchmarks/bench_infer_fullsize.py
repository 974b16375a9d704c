"""Full-size inference: ``pconv3d infer`` and its sliding-window call on the 1 mm MNI grid (197x233x189), 30 % of
the slices missing, ``PartialUNet`` (given the mask) against MONAI ``UNet`` of the same configuration (zero-filled
input), eager and compiled; and the command under ``torchrun --nproc_per_node 2`` on a folder of 4 volumes.

Run: ``python -m benchmarks.bench_infer_fullsize [--output /tmp/pconv3d-fullsize] [--reps 3] [--compile]
[--torchrun] [--device cuda]`` (``--quick``: a 64³ crop and 32³ windows, to check the script runs).

The volumes are the MNI152 template shipped with nilearn (what the project's dataset is made from), at its own
1 mm grid, with 30 % of the axial slices set to NaN (the missing data ``pconv3d infer`` finds). Both networks
share one set of weights (untrained: the time does not depend on them). Windows of 96³, 4 per batch, overlap
0.25. The sliding-window call is timed interleaved in this process (medians) and its peak memory measured in
a child process as in ``benchmarks/bench_unet.py``; each command is a child process: its wall time and its
peak resident set (GNU ``time``'s ``%M``), medians of ``--reps`` runs, one network after the other in turn.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from benchmarks.bench_partial_conv import time_calls
from benchmarks.bench_unet import _M_MMAP_THRESHOLD, _libc, cuda_peak, peak_growth
from pconv3d.data.mni import TEMPLATE_FILES, template_dir
from pconv3d.networks import PartialUNet

ROI, SW_BATCH, OVERLAP, MISSING = 96, 4, 0.25, 0.3
ARCH = {"spatial_dims": 3, "in_channels": 1, "out_channels": 4, "channels": [16, 32, 64, 128], "strides": [2, 2, 2],
        "num_res_units": 1}
NETS = {"MONAI UNet": ("monai.networks.nets.UNet", {"mask_input": False, "fill": None, "mask_as_channel": False}),
        "PartialUNet": ("pconv3d.networks.PartialUNet", {"mask_input": True, "fill": None, "mask_as_channel": False})}


def write_volumes(folder: Path, count: int, crop: int | None = None) -> list[Path]:
    """``count`` copies of the 1 mm template (its central ``crop``³ voxels if given), each with its own 30 % of
    axial slices missing (NaN)."""
    folder.mkdir(parents=True, exist_ok=True)
    ref = nib.load(template_dir() / TEMPLATE_FILES["t1"])
    t1 = np.asarray(ref.dataobj, dtype=np.float32)
    if crop:
        t1 = t1[tuple(slice((n - crop) // 2, (n - crop) // 2 + crop) for n in t1.shape)]
    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        vol = t1.copy()
        vol[:, :, rng.choice(vol.shape[2], int(MISSING * vol.shape[2]), replace=False)] = np.nan
        path = folder / f"mni_1mm_{i}.nii.gz"
        nib.save(nib.Nifti1Image(vol, ref.affine), path)
        paths.append(path)
    return paths


def write_checkpoints(folder: Path) -> dict[str, Path]:
    """A checkpoint per network, as ``pconv3d train`` writes them (weights, architecture, input recipe)."""
    torch.manual_seed(0)
    state = UNet(**ARCH).state_dict()
    paths = {}
    for name, (target, inputs) in NETS.items():
        paths[name] = folder / f"{target.rsplit('.', 1)[1]}.pt"
        torch.save({"network": state, "network_def": {"_target_": target, **ARCH}, "input_recipe": inputs}, paths[name])
    return paths


def run_command(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak resident set (bytes) of a command; it must succeed. The command is started by
    GNU ``time``: a child forked from this (large) process would count this process's resident set, which it
    held until its ``exec``, in its own peak; ``time`` is small when it forks the command."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "peak_kb %M", *argv], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    peak = [line for line in proc.stderr.splitlines() if line.startswith("peak_kb ")][-1]
    return wall, int(peak.split()[1]) * 1024


def command_table(args, volumes: list[Path], ckpts: dict[str, Path]) -> list[str]:
    out = volumes[0].parent.parent / "predictions"
    variants = [(name, flags) for name in NETS for flags in ([(), ("--compile",)] if args.compile else [()])]
    runs: dict[tuple, list[tuple[float, int]]] = {v: [] for v in variants}
    common = ["--patch_size", f"[{args.roi},{args.roi},{args.roi}]", "--sw_batch_size", str(SW_BATCH), "--progress", "false",
              "--overwrite", "--device", str(args.device)]
    for _ in range(args.reps):
        for name, flags in variants:
            argv = [sys.executable, "-m", "pipelines.cli", "infer", "--model", str(ckpts[name]), "--input", str(volumes[0]),
                    "--output", str(out), *flags, *common]
            runs[(name, flags)].append(run_command(argv))
    if args.torchrun:
        folder = volumes[0].parent / "four"
        if len(list(folder.glob("*.nii.gz"))) != 4:
            write_volumes(folder, 4, args.crop)
        for name in NETS:
            key = (name, ("torchrun 2 processes, 4 volumes",))
            runs[key] = []
            for _ in range(args.reps):
                argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "pipelines.cli",
                        "infer", "--model", str(ckpts[name]), "--input", str(folder), "--output", str(out / "four"), *common]
                runs[key].append(run_command(argv))
    lines = ["| command | network | wall (s) | × UNet | peak RSS (MB) | × UNet |", "|---|---|---:|---:|---:|---:|"]
    for (name, flags), values in runs.items():
        wall = statistics.median(v[0] for v in values)
        peak = statistics.median(v[1] for v in values)
        ref = runs[("MONAI UNet", flags)]
        ref_wall, ref_peak = statistics.median(v[0] for v in ref), statistics.median(v[1] for v in ref)
        label = "pconv3d infer " + (" ".join(flags) if flags else "(eager)")
        lines.append(f"| {label} | {name} | {wall:.1f} | {wall / ref_wall:.2f}× | {peak / 1e6:.0f} | {peak / ref_peak:.2f}× |")
    return lines


def window_fns(volume: Path, device: torch.device, compile: bool, roi: int) -> tuple[dict, list[torch.Tensor]]:
    """Per network, the sliding-window call on the volume (NaN holes cleared, the mask given to PartialUNet)."""
    data = torch.from_numpy(np.asarray(nib.load(volume).dataobj, dtype=np.float32))[None, None].to(device)
    mask = torch.isfinite(data).float()
    x = torch.nan_to_num(data, nan=0.0)
    torch.manual_seed(0)
    unet = UNet(**ARCH).eval().to(device)
    partial = PartialUNet(**ARCH).eval().to(device)
    partial.load_state_dict(unet.state_dict())
    nets = {"MONAI UNet": unet, "PartialUNet": partial}
    if compile:
        nets = {name: torch.compile(net) for name, net in nets.items()}

    def call(name: str):
        def f(m: torch.Tensor) -> None:
            with torch.no_grad():
                if name == "PartialUNet":
                    sliding_window_inference(x, roi, SW_BATCH, nets[name], OVERLAP, condition=m)
                else:
                    sliding_window_inference(x, roi, SW_BATCH, nets[name], OVERLAP)
        return f

    return {name: call(name) for name in nets}, [mask]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="/tmp/pconv3d-fullsize")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also compiled (torch.compile; pconv3d infer --compile)")
    p.add_argument("--torchrun", action="store_true", help="also the command under torchrun, 2 processes, 4 volumes")
    p.add_argument("--device", type=torch.device, default=torch.device("cpu"))
    p.add_argument("--quick", action="store_true", help="a 64³ crop and 32³ windows, to check the script runs")
    p.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)  # the child process below
    args = p.parse_args()
    args.crop, args.roi = (64, 32) if args.quick else (None, ROI)
    out = Path(args.output) / ("quick" if args.quick else "full")
    volumes = sorted((out / "volumes").glob("*.nii.gz")) or write_volumes(out / "volumes", 1, args.crop)
    compiled = [False, True] if args.compile else [False]
    if args.memory_only:
        _libc.mallopt(_M_MMAP_THRESHOLD, 1 << 16)
        peaks = {}
        for c in compiled:
            fns, masks = window_fns(volumes[0], args.device, c, args.roi)
            for name, fn in fns.items():
                fn(masks[0])  # warm-up (and compilation)
                peaks[f"{name}|{c}"] = peak_growth(lambda: fn(masks[0].clone()))
        print(json.dumps(peaks))
        return
    ckpts = write_checkpoints(out)
    times, peaks = {}, {}
    for c in compiled:
        fns, masks = window_fns(volumes[0], args.device, c, args.roi)
        for name, t in time_calls(fns, masks, args.reps).items():
            times[f"{name}|{c}"] = t
        if args.device.type == "cuda":
            peaks.update({f"{name}|{c}": cuda_peak(lambda: fn(masks[0].clone()), args.device) for name, fn in fns.items()})
    if args.device.type != "cuda":
        child = subprocess.run([sys.executable, "-m", "benchmarks.bench_infer_fullsize", "--memory-only", *sys.argv[1:]],
                               capture_output=True, text=True, check=True)
        peaks = json.loads(child.stdout.strip().splitlines()[-1])
    where = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {args.device} ({where}); {'x'.join(map(str, nib.load(volumes[0]).shape))} at 1 mm, {MISSING:.0%} of slices missing; "
          f"windows {args.roi}³, {SW_BATCH} per batch, overlap {OVERLAP}; channels {ARCH['channels']}, "
          f"num_res_units {ARCH['num_res_units']}; medians of {args.reps}\n")
    print("| sliding-window call | network | time (s) | × UNet | peak (MB) | × UNet |\n|---|---|---:|---:|---:|---:|")
    for key, t in times.items():
        name, c = key.split("|")
        ref = f"MONAI UNet|{c}"
        print(f"| {'compiled' if c == 'True' else 'eager'} | {name} | {t:.2f} | {t / times[ref]:.2f}× | "
              f"{peaks[key] / 1e6:.0f} | {peaks[key] / peaks[ref]:.2f}× |")
    print()
    print("\n".join(command_table(args, volumes, ckpts)))


if __name__ == "__main__":
    main()
