"""Reading path-valued config keys: a directory on disk, or a hub id."""

from __future__ import annotations

from pathlib import Path


def looks_local(path: str) -> bool:
    """True when `path` is meant as a directory on disk rather than a hub id.

    "org/name" is a hub id unless a directory "org" exists here; absolute, ~, ./ and ../ paths
    are always local.
    """
    if path.startswith(("/", "~", "./", "../")) or path in (".", ".."):
        return True
    parent = Path(path).parent
    return str(parent) != "." and parent.is_dir()
