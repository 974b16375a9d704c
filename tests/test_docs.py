"""The documentation site: it builds with warnings as errors, documents every public name of ``pconv3d`` and
the command line, and shows the notebooks with their figures.

One Sphinx build (about 15-30 s: the notebooks are rendered from their stored outputs, not run) serves
the checks below; ``docs/execute_notebooks.py`` refreshes the stored outputs.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import pconv3d

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SUBCOMMANDS = ("run", "data", "train", "infer", "evaluate", "demo")

pytestmark = pytest.mark.docs


def _modules() -> list:
    return [pconv3d] + [importlib.import_module(m.name) for m in pkgutil.walk_packages(pconv3d.__path__, "pconv3d.")]


def _public(module) -> list[str]:
    """``__all__`` where the module defines it, else its public names defined in it."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [n for n, v in vars(module).items() if not n.startswith("_") and not inspect.ismodule(v)
            and getattr(v, "__module__", module.__name__) == module.__name__]


def _inventory(path: Path) -> set[str]:
    """Names of the Python objects in a Sphinx ``objects.inv`` (four header lines, then zlib-compressed
    lines ``name domain:role priority uri display-name``)."""
    raw = path.read_bytes()
    header_end = 0
    for _ in range(4):
        header_end = raw.index(b"\n", header_end) + 1
    names = set()
    for line in zlib.decompress(raw[header_end:]).decode().splitlines():
        name, role = line.split(" ", 2)[:2]
        if role.startswith("py:"):
            names.add(name)
    return names


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-j", "2", "-b", "html", "docs", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert result.returncode == 0, (
        f"`{' '.join(cmd[1:])}` failed (warnings are errors):\n" + "\n".join(warnings or result.stderr.splitlines()[-30:])
    )
    return out


def test_every_public_name_is_in_the_inventory(site):
    documented = _inventory(site / "objects.inv")
    missing = [f"{m.__name__}.{n}" for m in _modules() for n in _public(m) if f"{m.__name__}.{n}" not in documented]
    assert not missing, f"public names with no entry in the API reference: {missing}"


def test_every_public_class_and_function_has_a_docstring():
    undocumented = []
    for module in _modules():
        if not (module.__doc__ or "").strip():
            undocumented.append(module.__name__)
        for name in _public(module):
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isroutine(obj):
                own = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__  # not a base class's
                if not (own or "").strip():
                    undocumented.append(f"{module.__name__}.{name}")
    assert not undocumented, f"public modules, classes and functions without a docstring: {sorted(set(undocumented))}"


def test_cli_reference_lists_every_subcommand(site):
    html = (site / "cli.html").read_text(encoding="utf-8")
    text = " ".join(re.sub(r"<[^>]+>", " ", html).split())  # the usage lines are highlighted token by token
    missing = [name for name in SUBCOMMANDS if f"pconv3d {name} [" not in text]  # its usage line
    assert not missing, f"subcommands missing from the CLI reference: {missing}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_has_a_page(site, notebook):
    page = site / "tutorials" / f"{notebook.stem}.html"
    assert page.is_file(), f"no page for {notebook.relative_to(ROOT)} in the built site"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_committed_notebook_has_its_outputs(notebook):
    """The site shows the outputs stored in the notebooks (it never runs them): every code cell must have
    been run, and a notebook that draws figures must hold them."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    code = [cell for cell in nb["cells"] if cell["cell_type"] == "code" and "".join(cell["source"]).strip()]
    not_run = [i for i, cell in enumerate(code) if cell.get("execution_count") is None]
    draws = any(re.search(r"\b(plt|matplotlib|imshow)\b", "".join(cell["source"])) for cell in code)
    images = [output for cell in code for output in cell.get("outputs", [])
              if any(key.startswith("image/") for key in output.get("data", {}))]
    errors = [output for cell in code for output in cell.get("outputs", []) if output.get("output_type") == "error"]
    refresh = "run `python docs/execute_notebooks.py` and commit the notebooks"
    assert not errors, f"{notebook.relative_to(ROOT)} is committed with an error in its outputs: {refresh}"
    assert not not_run, (f"{notebook.relative_to(ROOT)} is committed without the outputs of {len(not_run)} of its "
                         f"{len(code)} code cells, so its page on the documentation site lacks them: {refresh}")
    assert images or not draws, (f"{notebook.relative_to(ROOT)} draws figures but holds none in its outputs, so "
                                 f"its page on the documentation site shows none: {refresh}")
