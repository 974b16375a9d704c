"""The one place where the command line turns failures into what a user reads.

A *user error* is a mistake in what was asked or given, or a fault of the machine the user can fix: a bad
argument, a missing, unreadable or inconsistent file, a full or read-only disk. It is reported as one line,
``pconv3d <command>: error: <message>``, with exit code 2 and no traceback. Ctrl-C ends the command with
``pconv3d <command>: interrupted`` and exit code 130. Anything else is a bug of ours and keeps its traceback.
"""

from __future__ import annotations

import errno
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

# errno values that describe the user's files or disk, not our code
_USER_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR,
    errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EFBIG, errno.EIO,
})


class CLIError(Exception):
    """A user-facing error: bad input, a missing file, an unknown config key. Its text is the whole message."""


def root_cause(e: BaseException) -> BaseException:
    """The innermost cause: MONAI wraps failures of config components and expressions in RuntimeErrors."""
    while isinstance(e, RuntimeError) and (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    return e


def user_message(e: BaseException) -> str | None:
    """The one-line message for a user error, or ``None`` when ``e`` is not one (a bug: keep the traceback)."""
    cause = root_cause(e)
    if isinstance(cause, OSError) and cause.errno is not None:
        if cause.errno not in _USER_ERRNOS:
            return None
        text = f"{cause.filename}: {cause.strerror}" if cause.filename is not None else str(cause.strerror)
    elif isinstance(cause, (CLIError, ValueError, OSError)):  # an OSError without errno is one of our messages
        text = str(cause)
    else:
        return None
    return " ".join(text.split()) or type(cause).__name__


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, raised by :func:`run_reporting_errors`'s SIGINT handler instead of a plain ``KeyboardInterrupt``.

    A plain one that passes through ``eval`` (MONAI evaluates config expressions such as ``$@trainer.run()``
    with it) leaves CPython marked as interrupted, and at exit it kills itself with SIGINT whatever the exit
    code, even when the interrupt was caught. That mark is set for ``KeyboardInterrupt`` itself, not for a
    subclass, so code that catches ``KeyboardInterrupt`` still sees this one."""


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted()


@contextmanager
def _sigint_raises_interrupted() -> Iterator[None]:
    """Ctrl-C raises :class:`Interrupted` while the block runs. One that lands in a finalizer or a weakref
    callback, where Python ignores exceptions, is delivered again rather than printed and lost."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield  # only the main thread may set handlers; an ignored or custom SIGINT stays as it is
        return
    previous_hook, main = sys.unraisablehook, threading.main_thread().ident

    def redeliver(unraisable) -> None:
        if isinstance(unraisable.exc_value, Interrupted):
            # a moment later, from another thread: it then arrives after this finalizer, in code that can raise
            timer = threading.Timer(0.1, signal.pthread_kill, args=(main, signal.SIGINT))
            timer.daemon = True
            timer.start()
        else:
            previous_hook(unraisable)

    signal.signal(signal.SIGINT, _raise_interrupted)
    sys.unraisablehook = redeliver
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = previous_hook


def run_reporting_errors(command: str, func: Callable[[], int | None]) -> int:
    """Run ``func`` for subcommand ``command``; user errors and Ctrl-C become one line on stderr and an exit code."""
    try:
        with _sigint_raises_interrupted():
            return int(func() or 0)
    except KeyboardInterrupt:
        print(f"pconv3d {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        message = user_message(e)
        if message is None:
            raise
        print(f"pconv3d {command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
