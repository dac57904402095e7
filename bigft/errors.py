"""User-facing errors: a clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

# Exit code for a user mistake (bad config, bad data): distinct from 1, a crash.
USER_ERROR_EXIT = 2


class BigftError(Exception):
    """A mistake the user can fix (config, data, paths). Printed without a traceback."""


class ConfigError(BigftError):
    """An impossible or invalid configuration, found before any work starts."""


class DataError(BigftError):
    """Bad input data: names the file, line or field and what was expected."""


class CheckpointError(BigftError):
    """A checkpoint that claims to be complete but cannot be loaded, or one asked for by path
    that is not complete: resuming from anything else would silently train something else."""


class TrainingError(BigftError):
    """Training cannot go on (e.g. too many non-finite losses in a row)."""


def exit_on_user_error(fn: F) -> F:
    """Wrap an entry point so that a BigftError prints `bigft: error: ...` and exits 2.

    Goes under @hydra.main, which would print a traceback for any exception leaving the
    function; SystemExit passes through it.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BigftError as err:
            print(f"bigft: error: {err}", file=sys.stderr, flush=True)
            sys.exit(USER_ERROR_EXIT)

    return wrapper  # type: ignore[return-value]
