"""pytest configuration shared by the tests, the notebooks and the docstring examples of :mod:`pconv3d`.

Docstring examples run as doctests (``--doctest-modules`` over ``pconv3d``) with ``torch``, ``monai`` and the
public names of :mod:`pconv3d` in scope, as a user who imported them would have them.
"""

import os
from pathlib import Path

import monai
import monai.networks.nets
import pytest
import torch

import pconv3d
import pconv3d.blocks
import pconv3d.masks
import pconv3d.networks

# notebooks run in kernel processes, which pyproject's `pythonpath = ["."]` does not reach: they import the
# checkout under test too, not whichever pconv3d is installed
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(Path(__file__).parent)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace["torch"] = torch
    doctest_namespace["monai"] = monai
    doctest_namespace["UNet"] = monai.networks.nets.UNet
    for module in (pconv3d, pconv3d.blocks, pconv3d.masks, pconv3d.networks):
        for name in module.__all__:
            doctest_namespace[name] = getattr(module, name)


@pytest.fixture(autouse=True)
def _subnormals_kept():
    """Each test starts with the CPU computing subnormal floats, the process's default: a training workflow turns
    flushing on for the rest of its process (configs/train.yaml, ``flush_denormal``), and torch offers no getter
    to restore what was there before."""
    yield
    torch.set_flush_denormal(False)
