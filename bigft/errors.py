"""User-facing errors: a clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable)

# Exit code for a user mistake (bad config, bad data): distinct from 1, a crash.
USER_ERROR_EXIT = 2
# Hydra re-raises errors instead of printing them when this is set (see run_hydra_app).
_FULL_ERROR = "HYDRA_FULL_ERROR"
# The variable's value before run_hydra_app set it, while Hydra composes the config.
_composing: list[str | None] = []


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
        _composed()
        try:
            return fn(*args, **kwargs)
        except BigftError as err:
            print(f"bigft: error: {err}", file=sys.stderr, flush=True)
            sys.exit(USER_ERROR_EXIT)

    return wrapper  # type: ignore[return-value]


def run_hydra_app(app: Callable[[], Any]) -> None:
    """Run a @hydra.main app (decorated with exit_on_user_error); a mistake in its command line
    (unknown key, wrong type, unknown group option) exits 2 with `bigft: error: ...`.

    Hydra prints composition errors itself and exits 1, unless HYDRA_FULL_ERROR is set; then it
    raises them. bigft sets it until the config is composed (the task function restores it, so
    that a crash in the run is reported as Hydra always does). --help, --cfg and -m are Hydra's.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _composing.append(os.environ.get(_FULL_ERROR))
    os.environ[_FULL_ERROR] = "1"
    try:
        app()
    except (HydraException, OmegaConfBaseException) as err:
        if not _composing:  # raised by the run itself, not by composing its config
            raise
        print(f"bigft: error: {config_error_message(err)}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT)
    finally:
        _composed()


def _composed() -> None:
    if not _composing:
        return
    previous = _composing.pop()
    if previous is None:
        os.environ.pop(_FULL_ERROR, None)
    else:
        os.environ[_FULL_ERROR] = previous


def config_error_message(err: Exception) -> str:
    """One line for a command-line config mistake that Hydra or OmegaConf raised."""
    from hydra.errors import OverrideParseException
    from omegaconf.errors import ConfigKeyError, ValidationError

    options = getattr(err, "options", None)
    missing = getattr(err, "missing_cfg_file", None)
    if options and missing and "/" in missing:
        group, choice = missing.rsplit("/", 1)
        close = _did_you_mean(choice, options)
        return f"{group}={choice}: no such {group}{close}; the choices: {', '.join(options)}"
    cause = err.__cause__ if err.__cause__ is not None else err
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    full_key = getattr(cause, "full_key", None)
    if isinstance(cause, ConfigKeyError | AttributeError) and full_key:
        return _unknown_key(full_key, cause)
    if isinstance(cause, ValidationError) and full_key:
        return f"{full_key}={getattr(cause, 'value', '?')} is not allowed: {first_line}"
    if isinstance(err, OverrideParseException):
        return f"cannot parse the command line: {first_line} (Hydra's override syntax: key=value)"
    return first_line


def _unknown_key(full_key: str, cause: Any) -> str:
    section, _, key = full_key.rpartition(".")
    names = _keys_of(cause)
    where = f"the keys of {section}" if section else "the top-level keys"
    prefix = f"{section}." if section else ""
    close = _did_you_mean(key, names, prefix)
    listed = f"; {where}: {', '.join(names)}" if names else ""
    return f"unknown config key '{full_key}'{close}{listed}"


def _keys_of(cause: Any) -> list[str]:
    schema = getattr(cause, "object_type", None)
    if dataclasses.is_dataclass(schema):
        return [f.name for f in dataclasses.fields(schema)]
    parent = getattr(cause, "parent_node", None)
    return [str(k) for k in parent] if hasattr(parent, "keys") else []


def _did_you_mean(word: str, choices: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(prefix + c for c in close)}?)" if close else ""
