"""The ``pconv3d`` command line.

Each subcommand lives in its own module of ``pipelines`` that defines ``add_parser(subparsers)``
(registering its arguments and ``func``); this file only routes. Subcommands that run a bundle config
also take ``--id value`` overrides (their parser sets an ``extra`` default).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
import warnings
from collections.abc import Sequence

from pipelines.errors import EXIT_USER_ERROR, run_reporting_errors

# subcommand modules, in the order ``pconv3d --help`` lists them
SUBCOMMANDS = ("run", "data", "train", "infer", "evaluate", "demo")


class _Parser(argparse.ArgumentParser):
    """No abbreviations (``--epoch 2`` must be refused as an unknown config key, not read as ``--epochs``), and
    a bad argument is one line, like every other user error."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pconv3d", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in SUBCOMMANDS:
        importlib.import_module(f"pipelines.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # MONAI's deprecation notices are not the user's business
    warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not hasattr(args, "extra"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    return run_reporting_errors(args.command, lambda: args.func(args))


def entry(argv: Sequence[str] | None = None) -> int:
    """The ``pconv3d`` command (console script and ``python -m pipelines.cli``): :func:`main`, with Python's cyclic
    garbage collector kept out of the imports and the exit.

    Importing torch and MONAI makes about 440 000 objects that live as long as the process. Every collection on
    the way rescans them, and so does the interpreter's at exit: about a second each on a 2-core CPU
    (``benchmarks/bench_recipes.py``, its garbage collector table). Frozen (``gc.freeze``), they are never
    scanned again; only what the command itself makes is collected, as before. Tests call :func:`main`, many
    times in one process, where freezing would keep each run's garbage.
    """
    gc.disable()
    try:
        for name in SUBCOMMANDS:
            importlib.import_module(f"pipelines.{name}")
    finally:
        gc.enable()
    gc.freeze()
    code = main(argv)
    gc.freeze()  # the exit's own collection would only free memory that the ending process gives back anyway
    return code


if __name__ == "__main__":
    sys.exit(entry())
