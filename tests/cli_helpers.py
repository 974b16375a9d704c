"""Helpers of the command-line tests."""

from __future__ import annotations

from pathlib import Path

from pipelines.cli import main

# config overrides that make training and inference take seconds
TINY = ["--patch_size", "[16,16,16]", "--network_def#channels", "[4,8,16]", "--network_def#strides", "[2,2]",
        "--val_interval", "1", "--progress", "false", "--num_val", "1"]
ROOT = Path(__file__).resolve().parent.parent


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes: equal before and after means nothing was touched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(capsys, *argv: str) -> tuple[int, str]:
    """Run ``pconv3d argv`` in this process; (exit code, stderr). A user error must be one line, no traceback."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err.strip()
    if code == 2:
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        assert err.startswith("pconv3d"), err
    return code, err
