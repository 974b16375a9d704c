"""Errors the command line reports as one line (exit code 2), without a traceback."""


class CLIError(Exception):
    """A user-facing error: bad input, a missing file, an unknown config key."""
