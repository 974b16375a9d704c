"""Output folders of the command line: checked before any work, never two runs mixed in one, nothing left
behind by a command that failed.

* :func:`check_writable` asks whether files can be created in a folder without creating it;
* :func:`removed_if_failed` removes the folders a failed command created, when they are still empty;
* :func:`prepare_training_output` is the rule for a training folder: one training writes there at a time (it
  holds the folder's lock, :func:`lock_training_output`), a new run needs a folder without an earlier run
  (``overwrite`` removes that run whole), ``resume`` needs the earlier run's ``last.pt`` and a network of the
  same architecture.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from pipelines.errors import CLIError
from pipelines.handlers import BEST, LAST, RUN_FILES, check_architecture, load_checkpoint


def check_writable(folder: str | os.PathLike) -> None:
    """Raise a :class:`CLIError` unless files can be created in ``folder``, probing the folder or, when it does
    not exist yet, its nearest existing parent; creates nothing that stays."""
    folder = Path(folder).absolute()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise CLIError(f"output folder {folder} is not writable ({probe} is a file)")
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        raise CLIError(f"output folder {folder} is not writable ({e.strerror})") from None


def _missing_top(folder: Path) -> Path | None:
    """The outermost folder on the way to ``folder`` that does not exist yet (``None`` if it exists)."""
    folder = folder.absolute()
    if folder.exists():
        return None
    top = folder
    while not top.parent.exists():
        top = top.parent
    return top


def _remove_empty_tree(top: Path) -> None:
    """Remove ``top`` and the folders below it, bottom up, as long as they hold no file."""
    if not top.is_dir():
        return
    for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            return  # holds a file: keep it and everything above


@contextmanager
def removed_if_failed(*folders: str | os.PathLike | None) -> Iterator[None]:
    """Run a block that writes into ``folders``; if it fails (Ctrl-C included), the folders it created are
    removed again while they hold no file, so a failed command leaves no empty output folder behind."""
    tops = [top for f in folders if f is not None and (top := _missing_top(Path(f))) is not None]
    try:
        yield
    except BaseException:
        for top in tops:
            _remove_empty_tree(top)
        raise


TRAINING_LOCK = ".training.lock"  # in a training folder while a training writes there; not a run file

# The training locks this process holds, keyed by the folder's resolved path (one key for every spelling of it):
# the descriptor of the folder's open lock file. No entry can go stale: the lock is the kernel's flock on that
# descriptor, dropped when the process ends however it ends (kill -9 included), and the training_locks_released
# block an entry was taken in releases and removes it when the block ends (where no block is open, as under
# ``python -m monai.bundle run``, the entry lasts as long as the process).
_LOCKS: dict[Path, int] = {}


def lock_training_output(folder: str | os.PathLike) -> None:
    """Take ``folder``'s training lock (creating the folder) for this process, or raise a :class:`CLIError` when
    another training holds it; a lock this process holds already is kept.

    Args:
        folder: the training output folder.
    """
    folder = Path(folder).resolve()
    if folder in _LOCKS:
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TRAINING_LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CLIError(f"another training is writing into {folder}; wait for it to end or choose another "
                           "--output") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same_file = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same_file = False
        if same_file:
            _LOCKS[folder] = fd
            return
        os.close(fd)  # its holder removed the file between our open and our lock: lock the path's new file


@contextmanager
def training_locks_released() -> Iterator[None]:
    """Run a block; when it ends, however it ends, release the training locks taken in it and remove their
    files (still locked while removed, so a training that opened the old file retries on the path's new one)."""
    held = set(_LOCKS)
    try:
        yield
    finally:
        for folder in [f for f in _LOCKS if f not in held]:
            fd = _LOCKS.pop(folder)
            try:
                (folder / TRAINING_LOCK).unlink(missing_ok=True)
            finally:
                os.close(fd)


def earlier_run_files(folder: str | os.PathLike) -> list[str]:
    """Names of the files and folders of a training run (``last.pt``, ``best.pt``, logs) present in ``folder``."""
    folder = Path(folder)
    return [name for name in RUN_FILES if (folder / name).exists()]


def remove_run(folder: str | os.PathLike) -> None:
    """Remove the training run in ``folder`` whole (its files and folders, nothing else there)."""
    folder = Path(folder)
    for name in earlier_run_files(folder):
        path = folder / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def completed_epochs(path: str | os.PathLike) -> int:
    """Epochs completed when a checkpoint was written: ``path`` is the checkpoint or a run folder (its
    ``last.pt``); 0 when there is none."""
    path = Path(path)
    path = path / LAST if path.is_dir() else path
    if not path.is_file():
        return 0
    state = load_checkpoint(path).get("trainer", {})  # ignite keeps the iteration, and the epoch only sometimes
    return int(state["epoch"]) if "epoch" in state else int(state.get("iteration", 0)) // max(int(state.get("epoch_length") or 1), 1)


def training_state(folder: str | os.PathLike, epochs: int) -> str:
    """What a training of ``epochs`` epochs into ``folder`` can build on: ``"complete"`` (a run of exactly that
    many epochs, with its ``best.pt``: reuse it), ``"interrupted"`` (a ``last.pt`` of fewer epochs: resume it) or
    ``"none"`` (nothing, or a run that cannot be continued to ``epochs``: train anew, replacing it)."""
    folder = Path(folder)
    done = completed_epochs(folder)
    if done == epochs and (folder / BEST).is_file():
        return "complete"
    return "interrupted" if (folder / LAST).is_file() and done < epochs else "none"


def prepare_training_output(
    output_dir: str | os.PathLike,
    resume: bool,
    overwrite: bool,
    network: torch.nn.Module,
    epochs: int,
) -> None:
    """Check, before training starts, that ``output_dir`` can take this run and lock it for this run
    (:func:`lock_training_output`); with ``overwrite``, remove an earlier run there. Raises a
    :class:`CLIError` that says how to go on otherwise.

    Args:
        output_dir: the training output folder.
        resume: continue the run whose ``last.pt`` is in ``output_dir``.
        overwrite: replace an earlier run in ``output_dir``.
        network: the configured network; on ``resume`` the checkpoint must hold its architecture.
        epochs: the total number of epochs asked for.
    """
    out = Path(output_dir)
    check_writable(out)
    if resume and overwrite:
        raise CLIError("--resume continues the run in the output folder and --overwrite replaces it: give one of them")
    lock_training_output(out)
    if resume:
        last = out / LAST
        if not last.is_file():
            raise CLIError(f"nothing to resume: {last} does not exist (train without --resume to start a new run)")
        check_architecture(network, load_checkpoint(last)["network"], last)
        done = completed_epochs(out)
        if epochs < done:
            raise CLIError(f"--epochs {epochs} is fewer than the {done} epochs {last} has already completed")
        return
    present = earlier_run_files(out)
    if present and not overwrite:
        raise CLIError(f"{out} already holds a training run ({', '.join(present)}); pass --resume to continue it, "
                       "--overwrite to replace it, or choose another --output")
    remove_run(out)
