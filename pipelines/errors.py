"""The one place where the command line turns failures into what a user reads.

A *user error* is a mistake in what was asked or given, or a fault of the machine the user can fix: a bad
argument, a missing, unreadable or inconsistent file, a full or read-only disk. It is reported as one line,
``pconv3d <command>: error: <message>``, with exit code 2 and no traceback. Ctrl-C ends the command with
``pconv3d <command>: interrupted`` and exit code 130. Anything else is a bug of ours and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable

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


def run_reporting_errors(command: str, func: Callable[[], int | None]) -> int:
    """Run ``func`` for subcommand ``command``; user errors and Ctrl-C become one line on stderr and an exit code."""
    try:
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
