"""Read records from local files or `datasets`, with errors that name the file and line."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bigft.errors import ConfigError, DataError


@dataclass
class Record:
    """One input example as the user wrote it, after field renaming."""

    fields: dict[str, Any]
    # Where it came from, for error messages: "data/train.jsonl:17" or "dataset 'x' [train] row 17".
    source: str


SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def read_records(
    spec: str,
    *,
    subset: str | None = None,
    split: str = "train",
    fields: dict[str, str] | None = None,
) -> list[Record]:
    """Records from a local file, a directory of files (sorted), or a `datasets` name.

    `fields` maps the task's field names to the user's ({"output": "answer"}); the user's keys are
    renamed so that tasks only ever see their own names.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        records = [r for file in _data_files(path) for r in _read_file(file, str(file))]
    elif path.is_file():
        records = _read_file(path, spec)
    elif looks_like_path(spec):
        raise DataError(f"data file not found: {spec}")
    else:
        records = _read_dataset(spec, subset, split)
    if not records:
        raise DataError(f"no records in {spec!r}: the data set is empty")
    if fields:
        for record in records:
            _rename(record, fields)
    return records


def split_train_eval(
    records: list[Record], fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
    """Hold out `fraction` of the records, chosen by `seed`; both parts keep the file order."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"data.eval_fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return list(records), []
    n_eval = max(1, round(len(records) * fraction))
    if n_eval >= len(records):
        raise DataError(
            f"cannot hold out {fraction:.0%} of {len(records)} records and keep any for training; "
            "lower data.eval_fraction or give data.eval"
        )
    held_out = set(random.Random(seed).sample(range(len(records)), n_eval))
    train = [r for i, r in enumerate(records) if i not in held_out]
    evals = [r for i, r in enumerate(records) if i in held_out]
    return train, evals


def looks_like_path(spec: str) -> bool:
    # Hub names ("org/name") also contain "/", so only these mark a spec as meant to be local.
    return spec.endswith(SUFFIXES) or spec.startswith(("/", "./", "../", "~"))


def _data_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise DataError(f"no {', '.join(SUFFIXES)} files in directory {directory}")
    return files


def _read_file(path: Path, shown: str) -> list[Record]:
    readers: dict[str, Callable[[Path, str], list[Record]]] = {
        ".jsonl": _read_jsonl,
        ".json": _read_json,
        ".csv": _read_csv,
        ".parquet": _read_parquet,
    }
    reader = readers.get(path.suffix)
    if reader is None:
        raise DataError(f"{shown}: unsupported file type; use one of {', '.join(SUFFIXES)}")
    return reader(path, shown)


def _read_jsonl(path: Path, shown: str) -> list[Record]:
    records = []
    with path.open("rb") as f:
        # Bytes, decoded line by line, so that even an encoding error names its line.
        for line_no, raw in enumerate(f, start=1):
            where = f"{shown}:{line_no}"
            try:
                # utf-8-sig on the first line: many editors start a UTF-8 file with a BOM.
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{where}: not UTF-8 ({err.reason})") from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: invalid JSON ({err.msg}, column {err.colno})") from None
            if not isinstance(value, dict):
                raise DataError(f"{where}: expected a JSON object, got {_json_kind(value)}")
            records.append(Record(value, where))
    return records


def _read_json(path: Path, shown: str) -> list[Record]:
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise DataError(f"{shown}:{err.lineno}: invalid JSON ({err.msg})") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{shown}: not UTF-8 ({err.reason})") from None
    if not isinstance(value, list):
        raise DataError(f"{shown}: expected a JSON list of objects, got {_json_kind(value)}")
    records = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise DataError(f"{shown}[{i}]: expected a JSON object, got {_json_kind(item)}")
        records.append(Record(item, f"{shown}[{i}]"))
    return records


def _read_csv(path: Path, shown: str) -> list[Record]:
    records = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise DataError(f"{shown}:1: missing the CSV header row")
        line_no = reader.line_num
        for row in reader:
            # line_num is where a row ends (quoted fields span lines); a row starts after the last.
            where = f"{shown}:{line_no + 1}"
            line_no = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{where}: expected {len(header)} columns, found {len(row)}")
            records.append(Record(dict(zip(header, row, strict=True)), where))
    return records


def _read_parquet(path: Path, shown: str) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{shown}: cannot read Parquet ({err})") from None
    return [Record(row, f"{shown} row {i}") for i, row in enumerate(rows)]


def _read_dataset(name: str, subset: str | None, split: str) -> list[Record]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, subset, split=split)
    except Exception as err:  # network, missing name, bad subset or split: all the user's to fix
        raise DataError(
            f"cannot load data set {name!r} (subset={subset!r}, split={split!r}): {err}. "
            f"It is not a local file or directory either; to use local data, give a path to a "
            f"{', '.join(SUFFIXES)} file or a directory of them"
        ) from None
    where = f"dataset {name!r} [{split}] row"
    return [Record(dict(row), f"{where} {i}") for i, row in enumerate(dataset)]


def _rename(record: Record, fields: dict[str, str]) -> None:
    for task_field, user_field in fields.items():
        if user_field in record.fields and user_field != task_field:
            record.fields[task_field] = record.fields.pop(user_field)


def _json_kind(value: Any) -> str:
    kinds = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"a number ({value})"
    return kinds.get(type(value), type(value).__name__)
