"""Records to tokenized examples, counted (truncated, dropped) and optionally cached on disk.

A task's `encode` returns [] for a record it drops and marks an example it had to shorten with
`"truncated": True`; this module counts both and strips the marker. The caller builds the cache
key (with `cache_key`) from everything the examples depend on: records, tokenizer, task settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from bigft.data.readers import Record
from bigft.errors import DataError

# Bump when the cached layout or any task's encoding changes, so old caches are not reused.
CACHE_VERSION = 2


@dataclass
class TokenizedData:
    examples: list[dict]
    # Records cut to task.max_length, and records left out under overlong=drop.
    truncated: int = 0
    dropped: int = 0


def tokenize_records(
    task: Any, records: list[Record], *, cache_path: Path | None = None
) -> TokenizedData:
    """Encode every record with `task`; reuse `cache_path` when it exists, else write it."""
    if cache_path is not None and Path(cache_path).exists():
        return _load(Path(cache_path))
    data = TokenizedData(examples=[])
    for record in records:
        examples = task.encode(record)
        if not examples:
            data.dropped += 1
        # Any example of a record (dpo: each pair of a ranking) being cut means the record was.
        if any([ex.pop("truncated", False) for ex in examples]):
            data.truncated += 1
        data.examples += examples
    if not data.examples and records:
        raise DataError(
            f"all {len(records)} records were dropped as longer than "
            f"task.max_length={getattr(task, 'max_length', '?')} tokens; raise task.max_length "
            "or set task.overlong=truncate"
        )
    if cache_path is not None:
        _save(Path(cache_path), data)
    return data


def cache_key(*parts: Any) -> str:
    """A sha256 hex digest over JSON-serialised parts; records are hashed by their content.

    Pass everything the examples depend on, e.g.
    cache_key(records, tokenizer_fingerprint(tok), task_cfg_as_dict).
    """
    digest = hashlib.sha256(f"bigft-cache-v{CACHE_VERSION}".encode())
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=_jsonable).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of what decides a tokenizer's output: vocabulary, rules, specials, chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return cache_key(
        backend.to_str() if backend is not None else tokenizer.get_vocab(),
        type(tokenizer).__name__,
        getattr(tokenizer, "chat_template", None),
        tokenizer.special_tokens_map,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Record):
        return {"fields": value.fields, "source": value.source}
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    # Bytes, dates and other values: their text is a faithful enough identity.
    return str(value)


def _load(path: Path) -> TokenizedData:
    with path.open(encoding="utf-8") as f:
        payload = json.load(f)
    return TokenizedData(payload["examples"], payload["truncated"], payload["dropped"])


def _save(path: Path, data: TokenizedData) -> None:
    payload = {"examples": data.examples, "truncated": data.truncated, "dropped": data.dropped}
    write_json(path, payload)


def write_json(path: Path, payload: Any) -> None:
    """Write then rename: readers (other ranks, a later run) never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
