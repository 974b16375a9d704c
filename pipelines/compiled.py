"""``torch.compile`` for the networks MONAI's engines run (config ids ``compile`` and ``compile_kwargs``)."""

from __future__ import annotations

from typing import Any

import torch
from monai.data import MetaTensor


class PlainTensorCall(torch.nn.Module):
    """Calls ``module`` with every ``MetaTensor`` argument as a plain tensor (keyword arguments too: the mask a
    partial network takes as ``condition``). Compiled graphs take plain tensors (MONAI engines' own
    ``compile=True`` converts the image only, and its copy of the batch metadata back fails for batches of
    more than one volume); MONAI's inferers put the metadata back on the prediction.

    Args:
        module: the network, compiled or not.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*map(_plain, args), **{k: _plain(v) for k, v in kwargs.items()})


def _plain(value: Any) -> Any:
    return value.as_tensor() if isinstance(value, MetaTensor) else value


def compiled(network: torch.nn.Module, compile_kwargs: dict[str, Any] | None = None) -> torch.nn.Module:
    """``network`` compiled with ``torch.compile(**compile_kwargs)``, called with plain tensors; the parameters
    stay ``network``'s own, so optimizers and checkpoints refer to ``network`` as before.

    Example::

        >>> net = compiled(torch.nn.Conv3d(1, 2, 3), {"backend": "eager"})
        >>> net(MetaTensor(torch.zeros(1, 1, 4, 4, 4))).shape
        torch.Size([1, 2, 2, 2, 2])
    """
    return PlainTensorCall(torch.compile(network, **(compile_kwargs or {})))
