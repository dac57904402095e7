"""The `launcher.*` values as Slurm takes them, shared by bigft's sbatch script and by Hydra's
submitit launcher (sweeps), so that one set of keys describes a Slurm job either way."""

from __future__ import annotations

import re
from typing import Any

from bigft.errors import ConfigError

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_MEM = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)B?$", re.IGNORECASE)


def time_minutes(value: str) -> int:
    """sbatch's --time forms ("90", "4:00:00", "1-12:00:00", "2-0") → whole minutes (rounded up)."""
    text = str(value).strip()
    match = _TIME.match(text)
    if match is None:
        raise ConfigError(
            f"launcher.time={value!r} is not a Slurm time limit; use MINUTES, HH:MM:SS or "
            "DAYS-HH:MM:SS"
        )
    days, first, second, third = match.groups()
    if days is not None:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
        total = (int(days) * 24 + hours) * 60 + minutes + (seconds > 0)
    elif third is not None:  # H:M:S
        total = int(first) * 60 + int(second) + (int(third) > 0)
    elif second is not None:  # M:S
        total = int(first) + (int(second) > 0)
    else:  # M
        total = int(first)
    return max(total, 1)


def mem_gb(value: str | None) -> int | None:
    """sbatch's --mem ("64G", "500000M", "0") → whole GB for submitit (None: not set)."""
    if value is None:
        return None
    match = _MEM.match(str(value).strip())
    if match is None:
        raise ConfigError(f"launcher.mem={value!r} is not a memory size (e.g. 64G, 500000M, 0)")
    number, unit = float(match.group(1)), (match.group(2) or "M").upper()
    scale = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}[unit]
    return round(number * scale)


def option_pairs(options: list[str]) -> dict[str, str | None]:
    """["--mail-type=END", "--reservation=x", "--exclusive"] → {"mail-type": "END", ...}."""
    pairs: dict[str, str | None] = {}
    for option in options:
        text = str(option).strip()
        if not text.startswith("--"):
            raise ConfigError(
                f"launcher.sbatch_extra entry {option!r} must be a long sbatch option such as "
                "--mail-type=END"
            )
        key, _, value = text[2:].partition("=")
        pairs[key] = value or None
    return pairs


def submitit_parameters(extra: list[str], exclusive: bool) -> dict[str, Any]:
    """The options submitit has no field for, as its `additional_parameters`."""
    params: dict[str, Any] = {k.replace("-", "_"): v for k, v in option_pairs(extra).items()}
    # submitit writes a bare `--key` for True; for a value of None it would write `--key=None`.
    params = {k: (True if v is None else v) for k, v in params.items()}
    if exclusive:
        params["exclusive"] = True
    # Requeue is what lets a preempted array task come back and resume.
    params["requeue"] = True
    return params


def positive_or_none(value: int) -> int | None:
    return value if value and value > 0 else None
