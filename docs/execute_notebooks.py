"""Run the notebooks in ``notebooks/`` again and save them with their outputs (figures included).

The documentation site shows the outputs stored in the notebooks and never runs them (the build stays fast
and offline; CI runs the notebooks through nbmake). Whenever a notebook or what it shows changes, refresh
the stored outputs and commit the notebooks::

    python docs/execute_notebooks.py                      # all three
    python docs/execute_notebooks.py notebooks/01_partial_convolution.ipynb

Each notebook runs in a fresh kernel with ``notebooks/`` as its working directory and the checkout first on
``PYTHONPATH`` (as under pytest), and is written back only after every cell has run: a notebook that fails
keeps its previous file, and the script exits with status 1 naming it. Notebook 02 trains a small network
first when no trained run is found in ``outputs/`` (several minutes on a CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.validator import normalize

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def image_outputs(nb: nbformat.NotebookNode) -> int:
    """How many outputs of the notebook hold an image."""
    return sum(
        1
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if any(key.startswith("image/") for key in output.get("data", {}))
    )


def execute(path: Path, timeout: int, kernel: str) -> nbformat.NotebookNode:
    """Run every cell of the notebook at ``path`` in a fresh kernel and return the notebook with outputs."""
    nb = nbformat.read(path, as_version=4)
    _, normalized = normalize(nb)  # cell ids, which newer nbformat versions require
    nb = nbformat.from_dict(normalized)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=kernel,
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,  # no timestamps in the committed file
    )
    client.execute()
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run (default: every notebooks/*.ipynb)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds a cell may run (default: 3600)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb"))

    # the kernel imports this checkout, and draws figures into the notebook whatever MPLBACKEND says
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"

    failed = []
    for path in paths:
        start = time.perf_counter()
        print(f"{path}: running ...", flush=True)
        try:
            nb = execute(path, args.timeout, args.kernel)
        except CellExecutionError as err:
            print(f"{path}: a cell failed, file left as it was\n{err}", file=sys.stderr)
            failed.append(path)
            continue
        tmp = path.with_name(f".{path.name}.tmp")
        nbformat.write(nb, tmp)
        os.replace(tmp, path)
        print(f"{path}: saved with {image_outputs(nb)} figure(s) in {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(map(str, failed))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
