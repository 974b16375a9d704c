"""How the running code is executed: the one place pconv3d asks (:func:`~pconv3d.masks.mode.execution_mode`)."""

import torch

__all__ = ["execution_mode"]


def execution_mode() -> str:
    """How the code running now is executed, which decides what the operator may do:

    * ``"eager"``: plain Python. Every shortcut: facts read from masks on the CPU, tensors recorded as
      holding zeros in their holes, renormalization in place, all-valid statistics from host counts.
    * ``"script"``: TorchScript. Mask carriers do not exist there (masks are tensors); facts are read from
      tensors as in eager mode, nothing is recorded.
    * ``"trace"``: ``torch.jit.trace`` (and the TorchScript ONNX exporter). A graph of standard operators
      that must not depend on mask values: nothing is read from data, and windows are counted by a
      ones-kernel convolution (exporters need static windows).
    * ``"export"``: ``torch.export`` (and the dynamo ONNX exporter). As ``"trace"``: standard operators
      only, nothing read from data.
    * ``"compile"``: ``torch.compile``. Nothing read from data; a layer's window statistics are one
      operator, ``pconv3d::window_stats`` (:mod:`pconv3d.masks.compiled`).

    TorchScript compiles both sides of a branch on this answer: the eager side goes into a function
    marked ``@torch.jit.unused``, or the branch is chosen by type (``isinstance(mask, Tensor)``: a carrier
    is never a tensor), which TorchScript resolves when it compiles.
    """
    if torch.jit.is_scripting():
        return "script"
    if torch.jit.is_tracing():
        return "trace"
    if torch.compiler.is_exporting():  # exporting sets the compiling flag too: asked first
        return "export"
    if torch.compiler.is_compiling():
        return "compile"
    return "eager"
