"""The default recipe against the plain one at full size (issue 25): ``gated`` (``GatedUNet`` given the image with
its holes filled and a confidence channel, the soft fill) and ``plain`` (MONAI ``UNet`` on the interpolated image),
side by side in one run, alternating: the whole ``pconv3d infer`` command, its parts timed apart, and training.

Run: ``python -m benchmarks.bench_recipes [--output /tmp/pconv3d-recipes] [--reps 3] [--epochs 15] [--device cuda]
[--num-workers 0] [--sections command parts train]`` from the repository root; it prints a Markdown report and
writes it to ``OUTPUT/bench_recipes.md`` (date, commit, torch version and CPU at the top). ``--quick`` (a 64³
crop, 1 rep, 2 epochs) only checks that the script runs: its numbers measure nothing. Never run it while a study
or the tests run: it times.

Setting: the MNI152 template that ships with nilearn at its own 1 mm grid (197x233x189) with 30 % of its axial
slices NaN (the missing data ``pconv3d infer`` finds), written as ``benchmarks/bench_infer_fullsize.py`` writes it;
networks of ``configs/train.yaml``'s ``network_def`` (the recipe sets ``in_channels``: 2 for gated, 1 for plain),
untrained, saved as ``pconv3d train`` saves them (weights, ``network_def``, ``input_recipe``): inference time does
not depend on the weights (the trained default of ``pconv3d run`` and an untrained one took the same time per
window batch), only the label map written (and so its compression) does, a little. Sliding windows 4 per
batch, overlap 0.25.

What it measures:

1. The whole command: ``pconv3d infer`` with each recipe's checkpoint, windows of the configs' size (32³), a child
   process started by GNU ``time`` (``bench_infer_fullsize.run_command``): wall time and peak resident set, best
   and median of ``--reps`` runs, the recipes in turn (the order reversed every other round, so that drift
   favours neither). Then the same command cold, phase by phase: run under a probe (``PROBE``: the standard
   library, then one wrapper around each of a few of the command's own calls) that notes the wall clock where
   each phase ends: start-up to the first volume read (interpreter, imports, argument parsing, config), checks and
   network set-up, reading and preprocessing, sliding window, inversion, writing, interpreter exit.
   Then what the command's entry point (``pipelines.cli.entry``: the garbage collector kept out of the imports and the
   exit) saves: ``pconv3d --help`` and the default's ``pconv3d infer`` through it and through ``pipelines.cli.main``
   alone, in turn.
2. Its parts, each built from ``configs/inference.yaml`` as the command builds it and timed in this process after
   a warm-up call, the recipes interleaved, medians of ``--reps``: start-up (child processes, wall: ``import torch,
   monai``, ``import pipelines.cli``, ``pconv3d --help``, which builds every subcommand's parser as every command
   does); the config and the network from the checkpoint; the checks before inference (they read the volume);
   reading and preparing the volume (the config's ``infer_transforms`` without the recipe's last steps: load, mask,
   orientation, normalization); hole filling on the whole volume (``InterpolateMissing``, ``soft=True`` for gated,
   ``soft=False`` for plain); the whole preprocessing (``infer_transforms(recipe=...)``); the sliding window at 32³
   and 96³; softmax and inversion onto the file's grid; argmax and writing. Then what of the command's median
   these parts leave unexplained (first-call costs, engine set-up, exit). With them, a training step: the
   configs' batch (2 volumes x 2 patches of 32³), forward, ``MaskedDiceCELoss``, backward, AdamW, on untrained
   networks (whose gates are open: a gate that closes in training makes subnormal gradients, which section 3's
   epochs include). Last, the bound of any lighter gate: the sliding window and the training step with
   ``GatedUNet(gate_channels=1)`` (one gate map per block, its convolution one output channel wider) in the
   default's place, timed in the same interleaved calls as the two recipes' networks.
3. Training: ``pconv3d train`` for ``--epochs`` epochs on the default dataset's 48³ volumes (``pconv3d data``)
   without validation, each recipe as its config trains it (gated: holes simulated; plain: ``unet_interpolated.yaml``,
   complete volumes), the plain recipe with simulated holes (gated's data path, so that the network's share
   shows) and the default with ``--flush_denormal false`` (the CPU computing the subnormal floats of its gradients),
   in turn, with ``--num-workers`` data-loader workers (0, the configs' value: the data path runs
   between the steps): wall time (start-up included) and peak resident set, best and median; the time per epoch
   from the run's TensorBoard events (the wall time of each epoch's last loss, so epochs 2 on; median); and, in this
   process, the data path alone: one epoch's draw of every training volume through each variant's dataset.

``--device cuda``: the network parts (sliding window, training step, and the commands' ``--device``) on the GPU,
timed between ``torch.cuda.synchronize()`` calls; refused when this machine has no CUDA GPU. Hole filling and the
rest of the data path stay on the CPU, where the command runs them.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import nibabel as nib
import torch
import torch.nn as nn
import yaml
from monai.bundle import ConfigParser
from monai.data import list_data_collate
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose, ConcatItemsd, Decollated, EnsureTyped, Invertd

from benchmarks.bench_infer_fullsize import MISSING, run_command, write_volumes
from benchmarks.bench_partial_conv import time_calls
from pconv3d.losses import MaskedDiceCELoss
from pconv3d.transforms import RECIPES, InputRecipe, InterpolateMissing, InterpolateMissingd
from pconv3d.transforms.recipes import IMAGE, LABEL, MASK, PRED
from pipelines.arguments import device as torch_device
from pipelines.cli import build_parser
from pipelines.config import CONFIG_DIR, load_config, parse_overrides
from pipelines.infer import check_inference, checkpoint_overrides
from pipelines.train import train_overrides

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT, PLAIN = "gated", "plain"  # the recipes compared: the default, and the reference of every ratio
SW_BATCH, OVERLAP, ROIS = 4, 0.25, (32, 96)
PYTHON = [sys.executable]
CLI = [*PYTHON, "-m", "pipelines.cli"]
# start-up of a command, child processes: the libraries alone, the command line's module, every subcommand's parser
STARTUP = {
    "start-up: `python -c 'import torch, monai'`": [*PYTHON, "-c", "import torch, monai"],
    "start-up: `python -c 'import pipelines.cli'`": [*PYTHON, "-c", "import pipelines.cli"],
    "start-up: `pconv3d --help`": [*CLI, "--help"],
}
# training, each recipe as its config trains it, the plain recipe on gated's data path (holes simulated), and the
# default with the CPU computing subnormal floats (what the config's flush_denormal saves)
TRAIN_VARIANTS = {
    DEFAULT: ["--config", "train.yaml"],
    PLAIN: ["--config", "train.yaml", "unet_interpolated.yaml"],
    "plain, simulated holes": ["--config", "train.yaml", "--recipe", "plain"],
    "gated, subnormals computed": ["--config", "train.yaml", "--flush_denormal", "false"],
}


def train_config() -> dict[str, Any]:
    """``configs/train.yaml`` as plain YAML: the network's size and the training batch come from it."""
    return yaml.safe_load((CONFIG_DIR / "train.yaml").read_text())


def network_def(recipe: InputRecipe, cfg: dict[str, Any]) -> dict[str, Any]:
    """The configs' ``network_def`` for ``recipe``'s network, references resolved as ``pconv3d train`` records it."""
    size = {k: cfg["network_def"][k] for k in ("spatial_dims", "channels", "strides", "num_res_units")}
    return {"_target_": recipe.network, **size, "in_channels": recipe.in_channels(cfg["image_channels"]),
            "out_channels": cfg["num_classes"]}


def build(definition: dict[str, Any]) -> nn.Module:
    module, name = definition["_target_"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**{k: v for k, v in definition.items() if k != "_target_"})


def write_recipe_checkpoints(folder: Path, cfg: dict[str, Any]) -> dict[str, Path]:
    """A checkpoint per recipe, as ``pconv3d train`` writes them (weights, architecture, input recipe); the
    records make ``pconv3d infer`` build the recipe's network and transforms (``write_checkpoints`` in
    ``bench_infer_fullsize`` writes one architecture for both of its networks, which a gated network does not fit)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in (DEFAULT, PLAIN):
        definition = network_def(RECIPES[name], cfg)
        torch.manual_seed(0)
        paths[name] = folder / f"{name}.pt"
        torch.save({"network": build(definition).state_dict(), "network_def": definition,
                    "input_recipe": RECIPES[name].as_dict()}, paths[name])
    return paths


def alternating(runs: dict[str, Callable[[], T]], reps: int) -> dict[str, list[T]]:
    """Each run ``reps`` times, in turn, the order reversed every other round so that drift favours none."""
    out: dict[str, list[T]] = {k: [] for k in runs}
    for r in range(reps):
        for k in list(runs)[:: 1 if r % 2 == 0 else -1]:
            out[k].append(runs[k]())
    return out


def medians(fns: dict[str, Callable[[], object]], reps: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call, interleaved after a warm-up each (``time_calls``, which synchronizes on its
    tensor's device; the functions here need no tensor of its)."""
    return time_calls({k: (lambda _, f=f: f()) for k, f in fns.items()}, [torch.zeros(1, device=device)], reps)


# ---------------------------------------------------------------------------------------------------
# 1. the whole command


def infer_argv(ckpt: Path, volume: Path, out: Path, roi: int, device: torch.device) -> list[str]:
    return [*CLI, "infer", "--model", str(ckpt), "--input", str(volume), "--output", str(out), "--patch_size",
            f"[{roi},{roi},{roi}]", "--sw-batch-size", str(SW_BATCH), "--overlap", str(OVERLAP), "--progress", "false",
            "--overwrite", "--device", str(device)]


def command_runs(args, volume: Path, ckpts: dict[str, Path], work: Path) -> dict[str, list[tuple[float, int]]]:
    """(wall seconds, peak bytes) of ``pconv3d infer`` per recipe and run."""
    return alternating({name: lambda name=name: run_command(
        infer_argv(ckpts[name], volume, work / "predictions" / name, args.patch, args.device)) for name in ckpts}, args.reps)


# The command run by ``python -c PROBE MARKS.json infer ...``: the wall clock (time.time, which the parent shares) at
# the ends of its phases, written to MARKS.json. Only the standard library runs before the command's own imports
# (this module's would count in its start-up); the patched calls are the command's own, one wrapper each.
PROBE = """
import gc, json, sys, time
gc.disable()  # as the command's entry() does for its imports, which begin here with the probe's own
marks = {}

def wrap(cls, attr, before=None, after=None):
    inner = getattr(cls, attr)

    def call(*args, **kwargs):
        if before and before not in marks:
            marks[before] = time.time()
        try:
            return inner(*args, **kwargs)
        finally:
            if after:
                marks[after] = time.time()
    setattr(cls, attr, call)

from monai.transforms import Invertd, LoadImaged
from monai.engines import SupervisedEvaluator
from monai.inferers import SlidingWindowInferer
wrap(LoadImaged, "__call__", before="read")
wrap(SupervisedEvaluator, "run", before="evaluator", after="evaluated")
wrap(SlidingWindowInferer, "__call__", before="windows", after="windowed")
wrap(Invertd, "__call__", after="inverted")
from pipelines.cli import entry
try:
    code = entry(sys.argv[2:])
finally:
    marks["returned"] = time.time()
    with open(sys.argv[1], "w") as f:
        json.dump(marks, f)
sys.exit(code)
"""
# (phase, the mark that ends it); the first starts when the process is launched, the last ends when it has exited
PHASES = [
    ("start-up to the first volume read (interpreter, imports, arguments, config with the checkpoint's records)", "read"),
    ("checks (read the volume), evaluator and network from the checkpoint", "evaluator"),
    ("reading and preprocessing (hole filling included)", "windows"),
    ("sliding window", "windowed"),
    ("softmax and inversion onto the file's grid", "inverted"),
    ("argmax, writing, the engine's end", "evaluated"),
    ("finalize and report", "returned"),
    ("interpreter exit (after the command returned)", None),
]


def probe_runs(args, volume: Path, ckpts: dict[str, Path], work: Path) -> dict[str, list[list[float]]]:
    """Seconds of each of :data:`PHASES` per recipe and run of the command under :data:`PROBE`."""
    marks = work / "marks.json"

    def run(name: str) -> list[float]:
        marks.unlink(missing_ok=True)  # never an earlier run's
        start = time.time()
        run_command([*PYTHON, "-c", PROBE, str(marks), *infer_argv(ckpts[name], volume, work / "predictions" / name,
                                                                  args.patch, args.device)[len(CLI):]])
        end = time.time()
        at = json.loads(marks.read_text())
        ends = [at[m] if m else end for _, m in PHASES]
        return [b - a for a, b in zip([start, *ends], ends)]

    return alternating({name: lambda name=name: run(name) for name in ckpts}, args.reps)


def command_table(args, volume: Path, ckpts: dict[str, Path],
                  work: Path) -> tuple[dict[str, list[tuple[float, int]]], list[str]]:
    """The command's runs, and its tables: wall time and peak memory, then its phases, cold."""
    command = command_runs(args, volume, ckpts, work)
    lines = [f"### The whole command: `pconv3d infer`, one volume (best and median of {args.reps} runs in turn)", "",
             f"| | default ({DEFAULT}) | {PLAIN} | {DEFAULT} / {PLAIN} |", "|---|---:|---:|---:|"]
    for label, i, pick, scale, fmt in (("wall, best (s)", 0, min, 1, "{:.1f}"),
                                       ("wall, median (s)", 0, statistics.median, 1, "{:.1f}"),
                                       ("peak RSS, best (MB)", 1, min, 1e-6, "{:.0f}"),
                                       ("peak RSS, median (MB)", 1, statistics.median, 1e-6, "{:.0f}")):
        v = {n: pick(r[i] for r in command[n]) * scale for n in command}
        lines.append(f"| {label} | {fmt.format(v[DEFAULT])} | {fmt.format(v[PLAIN])} | {v[DEFAULT] / v[PLAIN]:.2f}× |")
    phases = probe_runs(args, volume, ckpts, work)
    lines += ["", f"### The command's phases, cold: wall-clock marks inside `pconv3d infer` (medians of {args.reps} runs in "
              "turn; seconds)", "", f"| phase | default ({DEFAULT}) | {PLAIN} | {DEFAULT} / {PLAIN} |",
              "|---|---:|---:|---:|"]
    for i, (label, _) in enumerate([*PHASES, ("total (the command under the probe)", None)]):
        v = {n: statistics.median(sum(r) if i == len(PHASES) else r[i] for r in phases[n]) for n in phases}
        lines.append(f"| {label} | {v[DEFAULT]:.2f} | {v[PLAIN]:.2f} | {v[DEFAULT] / v[PLAIN]:.2f}× |")
    return command, lines


# the command as it runs (``pipelines.cli.entry``: the garbage collector kept out of the imports and the exit), and
# ``pipelines.cli.main`` alone in the same interpreter (the collector as Python sets it): what ``entry`` saves
MAIN_ONLY = [*PYTHON, "-c", "import sys; from pipelines.cli import main; sys.exit(main(sys.argv[1:]))"]


def collector_table(args, volume: Path, ckpts: dict[str, Path], work: Path) -> list[str]:
    """Wall seconds of ``pconv3d --help`` and of the default's ``pconv3d infer``, through ``entry`` and ``main``."""
    infer = infer_argv(ckpts[DEFAULT], volume, work / "predictions" / "collector", args.patch, args.device)[len(CLI):]
    commands = {"`pconv3d --help`": ["--help"], f"`pconv3d infer`, default ({DEFAULT})": infer}
    title = f"### The garbage collector at start-up and exit (best and median of {args.reps} runs in turn; seconds)"
    lines = [title, "",
             "| command | as it runs (`entry`) | `main` alone, the collector as Python sets it | entry / main |",
             "|---|---:|---:|---:|"]
    for label, argv in commands.items():
        runs = alternating({"entry": lambda: run_command([*CLI, *argv])[0],
                            "main": lambda: run_command([*MAIN_ONLY, *argv])[0]}, args.reps)
        for pick, name in ((min, "best"), (statistics.median, "median")):
            v = {k: pick(w) for k, w in runs.items()}
            lines.append(f"| {label}, {name} | {v['entry']:.2f} | {v['main']:.2f} | {v['entry'] / v['main']:.2f}× |")
    return lines


# ---------------------------------------------------------------------------------------------------
# 2. the parts


class CommandParts:
    """The objects ``pconv3d infer`` builds for a recipe's checkpoint (from ``configs/inference.yaml`` with the
    checkpoint's records), and the volume taken through them once, as its evaluator does."""

    def __init__(self, ckpt: Path, volume: Path, out: Path, device: torch.device) -> None:
        self.ckpt, self.device = ckpt, device
        # what `pconv3d infer --model CKPT --input VOLUME --output OUT --overwrite --device D --progress false` sets
        self.given = {"input": str(volume), "output_dir": str(out), "overwrite": True, "device": device,
                      "sw_batch_size": SW_BATCH, "overlap": OVERLAP, "progress": False}
        parser = self.setup()
        self.recipe = parser.get_parsed_content("input_recipe")
        self.image_channels = self.recipe.image_channels(parser.get_parsed_content("network_def#in_channels"))
        self.datalist = parser.get_parsed_content("datalist")
        self.network = parser.get_parsed_content("network")
        self.prepare_batch = parser.get_parsed_content("prepare_batch")
        self.preprocessing: Compose = parser.get_parsed_content("preprocessing")
        steps = list(self.preprocessing.transforms)
        # the recipe's steps come last but for EnsureTyped (pconv3d.transforms.recipes.infer_transforms)
        own = len(self.recipe.transforms())
        assert isinstance(steps[-1], EnsureTyped), steps[-1]
        assert all(isinstance(s, (InterpolateMissingd, ConcatItemsd)) for s in steps[-1 - own:-1]), steps
        self.reading = Compose([*steps[:-1 - own], steps[-1]])
        post = [s for s in parser.get_parsed_content("postprocessing").transforms if s is not None]
        cut = next(i for i, s in enumerate(post) if isinstance(s, Invertd)) + 1
        self.invert, self.write = Compose(post[:cut]), Compose(post[cut:])
        self.read = self.reading(self.datalist[0])
        self.batch = list_data_collate([self.preprocessing(self.datalist[0])])

    def setup(self) -> ConfigParser:
        """The config with the checkpoint's records, and the network from it, as the command sets them up."""
        parser = load_config(["inference.yaml"], {**checkpoint_overrides(str(self.ckpt), []), **self.given})
        parser.get_parsed_content("network")
        return parser

    def checks(self) -> None:
        check_inference(self.datalist, self.given["output_dir"], True, False, self.image_channels, {})

    def fill(self) -> None:
        InterpolateMissing(soft=self.recipe.fill == "soft")(self.read[IMAGE], self.read[MASK])

    def inputs(self) -> tuple[torch.Tensor, tuple, dict]:
        prepared = self.prepare_batch(self.batch, self.device)
        return prepared[0], *(prepared[2:] if len(prepared) == 4 else ((), {}))

    def window(self, roi: int, network: nn.Module | None = None) -> Callable[[], torch.Tensor]:
        """The sliding window over the volume with the checkpoint's network, or ``network`` given the same input."""
        inferer = SlidingWindowInferer((roi,) * 3, SW_BATCH, OVERLAP)
        image, args, kwargs = self.inputs()
        network = self.network if network is None else network.to(self.device).eval()

        def f() -> torch.Tensor:
            with torch.no_grad():  # the evaluator's eval mode
                return inferer(image, network, *args, **kwargs)
        return f

    def engine_item(self, roi: int) -> dict[str, Any]:
        """What the evaluator hands its postprocessing for the volume: batch and output decollated, merged."""
        image, _, _ = self.inputs()
        output = {IMAGE: image, LABEL: None, PRED: self.window(roi)()}
        decollate = Decollated(keys=None, detach=True)
        return {**decollate(self.batch)[0], **decollate(output)[0]}


# the parts' rows, in the order the command runs them
SETUP, CHECKS = "config and network from the checkpoint", "checks before inference (they read the volume)"
READING = "reading and preparing (load, mask, orientation, normalization)"
FILL = "hole filling, whole volume (`InterpolateMissing`, soft for gated)"
PREPROCESSING = "preprocessing, whole (`infer_transforms(recipe=...)`: reading, preparing, the recipe's steps)"
INVERT, WRITE = "softmax and inversion onto the file's grid", "argmax and writing the label map"
ONE_MAP = "one gate map per block"  # the parts' third network, beside the two recipes' (see parts_table)


def window_row(roi: int) -> str:
    return f"sliding window, {roi}³ windows"


def parts_table(args, volume: Path, ckpts: dict[str, Path], work: Path, cfg: dict[str, Any],
                command: dict[str, list[tuple[float, int]]] | None) -> list[str]:
    cpu = torch.device("cpu")
    rows: dict[str, dict[str, float]] = {}
    startup = alternating({k: lambda argv=argv: run_command(argv)[0] for k, argv in STARTUP.items()}, args.reps)
    for label, values in startup.items():
        rows[label] = dict.fromkeys((DEFAULT, PLAIN), statistics.median(values))  # one command for both recipes
    parts = {name: CommandParts(ckpts[name], volume, work / "predictions" / f"{name}-parts", args.device) for name in ckpts}
    steps: dict[str, tuple[Callable[[CommandParts], Callable[[], object]], torch.device]] = {
        SETUP: (lambda p: p.setup, cpu),
        CHECKS: (lambda p: p.checks, cpu),
        READING: (lambda p: lambda: p.reading(p.datalist[0]), cpu),
        FILL: (lambda p: p.fill, cpu),
        PREPROCESSING: (lambda p: lambda: p.preprocessing(p.datalist[0]), cpu),
        **{window_row(roi): (lambda p, roi=roi: p.window(roi), args.device) for roi in ROIS},
    }
    # the bound of any lighter gate: one gate map per block, whose convolution adds one output channel, timed in the
    # same interleaved calls as both recipes (its key is not a recipe's: the rows' cells read DEFAULT and PLAIN)
    one_map = build({**network_def(RECIPES[DEFAULT], cfg), "gate_channels": 1})
    for label, (make, device) in steps.items():
        fns = {name: make(p) for name, p in parts.items()}
        if label == window_row(args.patch):
            fns[ONE_MAP] = parts[DEFAULT].window(args.patch, one_map)
        rows[label] = medians(fns, args.reps, device)
    # postprocessing of the command's own windows' output; each call on a fresh copy of what the engine hands it
    items = {name: p.engine_item(args.patch) for name, p in parts.items()}
    rows[INVERT] = medians({name: lambda p=p, name=name: p.invert(dict(items[name])) for name, p in parts.items()},
                           args.reps, cpu)
    inverted = {name: p.invert(dict(items[name])) for name, p in parts.items()}
    rows[WRITE] = medians({name: lambda p=p, name=name: p.write(dict(inverted[name])) for name, p in parts.items()},
                          args.reps, cpu)
    del parts, items, inverted  # the full-size volumes and outputs go before the training step's tensors come
    train = medians({**{name: train_step(RECIPES[name], cfg, args.device) for name in ckpts},
                     ONE_MAP: train_step(RECIPES[DEFAULT], cfg, args.device, gate_channels=1)}, args.reps, args.device)

    # the target: hole filling plus network
    for roi in ROIS:
        rows[f"hole filling + sliding window, {roi}³"] = {n: rows[FILL][n] + rows[window_row(roi)][n] for n in rows[FILL]}
    lines = [f"### Its parts, timed apart in one process (medians of {args.reps}; seconds)", "",
             f"| step | default ({DEFAULT}) | {PLAIN} | {DEFAULT} / {PLAIN} |", "|---|---:|---:|---:|"]
    for label, t in rows.items():
        ratio = "same command" if label in STARTUP else f"{t[DEFAULT] / t[PLAIN]:.2f}×"
        lines.append(f"| {label} | {t[DEFAULT]:.2f} | {t[PLAIN]:.2f} | {ratio} |")
    if command is not None:
        # the command's steps: start-up to parsed arguments, set-up, checks, preprocessing, windows, postprocessing
        steps_run = [list(STARTUP)[-1], SETUP, CHECKS, PREPROCESSING, window_row(args.patch), INVERT, WRITE]
        total = {n: sum(rows[k][n] for k in steps_run) for n in (DEFAULT, PLAIN)}
        rest = {n: statistics.median(w for w, _ in command[n]) - total[n] for n in (DEFAULT, PLAIN)}
        lines += [f"| sum of the command's steps (`pconv3d --help`, set-up, checks, whole preprocessing, {args.patch}³ "
                  f"windows, inversion, writing) | {total[DEFAULT]:.2f} | {total[PLAIN]:.2f} | "
                  f"{total[DEFAULT] / total[PLAIN]:.2f}× |",
                  "| the command's median wall less that sum (cold imports and first calls, engine set-up, exit) | "
                  f"{rest[DEFAULT]:.2f} | {rest[PLAIN]:.2f} | {rest[DEFAULT] / rest[PLAIN]:.2f}× |"]
    batch = cfg["batch_size"] * cfg["num_samples"]
    step = f"training step ({batch} patches of {'x'.join(map(str, cfg['patch_size']))}: forward, loss, backward, AdamW)"
    lines.append(f"| {step} | {train[DEFAULT]:.3f} | {train[PLAIN]:.3f} | {train[DEFAULT] / train[PLAIN]:.2f}× |")
    for label, t, fmt in ((window_row(args.patch), rows[window_row(args.patch)], "{:.2f}"), (step, train, "{:.3f}")):
        lines.append(f"| {label}, `GatedUNet(gate_channels=1)` in the default's place (one gate map per block: the "
                     f"gates' cost without their width) | {fmt.format(t[ONE_MAP])} | {fmt.format(t[PLAIN])} | "
                     f"{t[ONE_MAP] / t[PLAIN]:.2f}× |")
    return lines


def train_step(recipe: InputRecipe, cfg: dict[str, Any], device: torch.device, **options: Any) -> Callable[[], None]:
    """One optimizer step of ``recipe``'s network (with ``options`` added to its arguments) on the configs' batch
    (random data, which the time does not depend on; an untrained network, whose open gates make no subnormal
    gradients)."""
    definition = {**network_def(recipe, cfg), **options}
    torch.manual_seed(0)
    net = build(definition).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["learning_rate"], weight_decay=cfg["optimizer"]["weight_decay"])
    loss = MaskedDiceCELoss(ignore_index=cfg["ignore_index"])
    n, patch = cfg["batch_size"] * cfg["num_samples"], cfg["patch_size"]
    x = torch.randn(n, definition["in_channels"], *patch, device=device)
    label = torch.randint(0, cfg["num_classes"], (n, 1, *patch), device=device).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss(net(x), label).backward()
        opt.step()
    return step


# ---------------------------------------------------------------------------------------------------
# 3. training


def epoch_seconds(run: Path, epochs: int) -> list[float]:
    """Seconds of epochs 2 to ``epochs`` from the run's TensorBoard events (the wall time of each epoch's last
    loss; the first epoch's start is not recorded); none where tensorboard is not installed or wrote nothing."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return []
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    if "train_loss" not in events.Tags().get("scalars", []):
        return []
    losses = sorted(events.Scalars("train_loss"), key=lambda e: e.step)
    per = len(losses) // epochs
    ends = [losses[e * per - 1].wall_time for e in range(1, epochs + 1)] if per else []
    return [b - a for a, b in zip(ends, ends[1:])]


def variant_dataset(argv: list[str], data: Path) -> Any:
    """The training dataset of a ``TRAIN_VARIANTS`` command line, read by ``pconv3d train``'s own parser and
    overrides: a ``CacheDataset`` whose items run the random transforms (holes, crop, augmentation, the recipe)."""
    args, extra = build_parser().parse_known_args(["train", *argv, "--data", str(data)])
    parser = load_config(args.config, {**train_overrides(args), **parse_overrides(extra)})
    return parser.get_parsed_content("train#dataset")


def epoch_of_data(dataset: Any) -> float:
    """Seconds to draw every item of ``dataset`` once: one epoch of its data path without the network."""
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return time.perf_counter() - start


def training_table(args, work: Path) -> list[str]:
    data = work / "data"
    if not (data / "dataset.json").is_file():
        subprocess.run([*CLI, "data", "--output", str(data), "--size", "48"], check=True, stdout=subprocess.DEVNULL)

    def train(name: str) -> tuple[float, int, list[float]]:
        run = work / "train" / name.replace(", ", "-").replace(" ", "-")
        argv = [*CLI, "train", *TRAIN_VARIANTS[name], "--data", str(data), "--output", str(run), "--epochs",
                str(args.epochs), "--val_interval", str(args.epochs + 1),  # no validation
                "--progress", "false", "--overwrite", "--device", str(args.device),
                "--num_workers", str(args.num_workers)]
        wall, peak = run_command(argv)
        return wall, peak, epoch_seconds(run, args.epochs)

    runs = alternating({name: lambda name=name: train(name) for name in TRAIN_VARIANTS}, args.reps)
    datasets = {name: variant_dataset(argv, data) for name, argv in TRAIN_VARIANTS.items()}
    for dataset in datasets.values():  # first calls (imports, allocations) before any is timed
        epoch_of_data(dataset)
    data_path = {name: statistics.median(seconds) for name, seconds in alternating(
        {name: lambda ds=ds: epoch_of_data(ds) for name, ds in datasets.items()}, args.reps).items()}
    names = list(TRAIN_VARIANTS)
    refs = names[1:]

    def row(label: str, value: Callable[[list], float | None], fmt: str) -> str:
        return values_row(label, {n: value(runs[n]) for n in names}, fmt)

    def values_row(label: str, v: dict[str, float | None], fmt: str) -> str:
        cells = [fmt.format(v[n]) if v[n] is not None else "n/a" for n in names]
        ratios = [f"{v[DEFAULT] / v[r]:.2f}×" if v[DEFAULT] is not None and v[r] else "n/a" for r in refs]
        return f"| {label} | {' | '.join(cells)} | {' | '.join(ratios)} |"

    def per_epoch(rs: list) -> float | None:
        seconds = [s for _, _, e in rs for s in e]
        return statistics.median(seconds) if seconds else None

    loader = f", {args.num_workers} data-loader worker(s)" if args.num_workers else ""
    return [f"### Training: `pconv3d train`, {args.epochs} epochs on 48³ volumes, no validation{loader} (best and "
            f"median of {args.reps} runs in turn)", "",
            f"| | default ({DEFAULT}) | {' | '.join(refs)} | {' | '.join(f'{DEFAULT} / {r}' for r in refs)} |",
            "|---|" + "---:|" * (len(names) + len(refs)),
            row("wall, best (s, start-up included)", lambda rs: min(w for w, _, _ in rs), "{:.1f}"),
            row("wall, median (s)", lambda rs: statistics.median(w for w, _, _ in rs), "{:.1f}"),
            row("per epoch, median over epochs 2 on and runs (s; TensorBoard event times)", per_epoch, "{:.2f}"),
            values_row("the data path alone: every training volume through the random transforms once, in this "
                       "process (s, median)", data_path, "{:.2f}"),
            row("peak RSS, median (MB)", lambda rs: statistics.median(p for _, p, _ in rs) / 1e6, "{:.0f}")]


# ---------------------------------------------------------------------------------------------------


def header(args, shape: tuple[int, ...], cfg: dict[str, Any]) -> list[str]:
    def git(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)

    commit = git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
    if git("diff", "--quiet", "HEAD").returncode != 0:
        commit += " with uncommitted changes"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown"
    where = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"
    net = cfg["network_def"]
    lines = [f"## Default (`{DEFAULT}`) against the `{PLAIN}` recipe at full size", "",
             f"{datetime.datetime.now().astimezone().isoformat(timespec='minutes')}, commit {commit}, "
             f"torch {torch.__version__}, {cpu} ({torch.get_num_threads()} threads), device {args.device} ({where}).", "",
             f"{'x'.join(map(str, shape))} at 1 mm, {MISSING:.0%} of the axial slices missing; networks of "
             f"configs/train.yaml (channels {net['channels']}, num_res_units {net['num_res_units']}); sliding "
             f"windows {SW_BATCH} per batch, overlap {OVERLAP}; the command with {args.patch}³ windows.", ""]
    if args.quick:
        lines[2:2] = ["**--quick: a 64³ crop, 1 rep, to check that the script runs; these numbers measure nothing.**", ""]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="/tmp/pconv3d-recipes",
                   help="work folder; the report goes to OUTPUT/bench_recipes.md")
    p.add_argument("--reps", type=int, default=3, help="runs of each command, calls of each part")
    p.add_argument("--epochs", type=int, default=15, help="epochs of each training")
    p.add_argument("--device", type=torch_device, default=torch.device("cpu"),
                   help="cpu, cuda, cuda:1 ... (the network parts and the commands; refused without a CUDA GPU)")
    p.add_argument("--num-workers", type=int, default=0,
                   help="the trainings' data-loader workers (configs' num_workers; 0: the data path runs between steps)")
    p.add_argument("--sections", nargs="+", choices=("command", "parts", "train"), default=["command", "parts", "train"])
    p.add_argument("--quick", action="store_true", help="a 64³ crop, 1 rep, 2 epochs, to check the script runs")
    args = p.parse_args()
    if args.quick:
        args.reps, args.epochs = 1, 2
    cfg = train_config()
    args.patch = cfg["patch_size"][0]  # the configs' windows, which the command uses
    work = Path(args.output) / ("quick" if args.quick else "full")
    volumes = sorted((work / "volumes").glob("*.nii.gz")) or write_volumes(work / "volumes", 1, 64 if args.quick else None)
    volume = volumes[0]
    ckpts = write_recipe_checkpoints(work / "models", cfg)
    lines = header(args, nib.load(volume).shape, cfg)
    command = None
    if "command" in args.sections:
        command, command_lines = command_table(args, volume, ckpts, work)
        lines += [*command_lines, "", *collector_table(args, volume, ckpts, work), ""]
    if "parts" in args.sections:
        lines += [*parts_table(args, volume, ckpts, work, cfg, command), ""]
    if "train" in args.sections:
        lines += [*training_table(args, work), ""]
    report = "\n".join(lines)
    print(report)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    (Path(args.output) / "bench_recipes.md").write_text(report)
    print(f"written to {Path(args.output) / 'bench_recipes.md'}")


if __name__ == "__main__":
    main()
