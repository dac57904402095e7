"""Readers: every format, field renaming, error locations, and the seeded train/eval split."""

from __future__ import annotations

import json

import pytest

from bigft.data.readers import Record, read_records, split_train_eval
from bigft.errors import ConfigError, DataError


def write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_jsonl_skips_blank_lines_and_keeps_true_line_numbers(tmp_path):
    spec = write(tmp_path / "train.jsonl", '{"text": "a"}\n\n   \n{"text": "b"}\n')
    records = read_records(spec)
    assert [r.fields["text"] for r in records] == ["a", "b"]
    assert [r.source for r in records] == [f"{spec}:1", f"{spec}:4"]


def test_jsonl_invalid_json_names_file_and_line(tmp_path):
    spec = write(tmp_path / "bad.jsonl", '{"text": "a"}\n\n{"text": oops}\n')
    with pytest.raises(DataError, match=rf"{spec}:3: invalid JSON \(Expecting value"):
        read_records(spec)


def test_jsonl_non_object_line_says_what_it_is(tmp_path):
    spec = write(tmp_path / "list.jsonl", '{"text": "a"}\n[1, 2]\n')
    with pytest.raises(DataError, match=rf"{spec}:2: expected a JSON object, got a list"):
        read_records(spec)


def test_json_list_and_non_object_index(tmp_path):
    spec = write(tmp_path / "d.json", json.dumps([{"text": "a"}, {"text": "b"}]))
    assert [r.source for r in read_records(spec)] == [f"{spec}[0]", f"{spec}[1]"]
    bad = write(tmp_path / "bad.json", json.dumps([{"text": "a"}, "b"]))
    with pytest.raises(DataError, match=r"bad\.json\[1\]: expected a JSON object, got a string"):
        read_records(bad)
    not_list = write(tmp_path / "obj.json", json.dumps({"text": "a"}))
    with pytest.raises(DataError, match="expected a JSON list"):
        read_records(not_list)


def test_csv_uses_file_line_numbers_even_across_quoted_newlines(tmp_path):
    spec = write(tmp_path / "d.csv", 'text,label\n"two\nlines",pos\nthird,neg\n')
    records = read_records(spec)
    assert records[0].fields == {"text": "two\nlines", "label": "pos"}
    assert [r.source for r in records] == [f"{spec}:2", f"{spec}:4"]
    bad = write(tmp_path / "bad.csv", "text,label\nok,pos\nonly-one\n")
    with pytest.raises(DataError, match=r"bad\.csv:3: expected 2 columns, found 1"):
        read_records(bad)


def test_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": [0, 1]}), path)
    records = read_records(str(path))
    assert records[1] == Record({"text": "b", "label": 1}, f"{path} row 1")


def test_directory_is_read_in_sorted_order(tmp_path):
    write(tmp_path / "b.jsonl", '{"text": "second"}\n')
    write(tmp_path / "a.json", json.dumps([{"text": "first"}]))
    write(tmp_path / "notes.txt", "ignored")
    assert [r.fields["text"] for r in read_records(str(tmp_path))] == ["first", "second"]


def test_fields_rename_user_keys_to_task_keys(tmp_path):
    spec = write(tmp_path / "d.jsonl", '{"question": "q", "answer": "a", "id": 1}\n')
    (record,) = read_records(spec, fields={"instruction": "question", "output": "answer"})
    assert record.fields == {"instruction": "q", "output": "a", "id": 1}


def test_missing_file_and_empty_data_and_bad_suffix(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=f"data file not found: {missing}"):
        read_records(missing)
    empty = write(tmp_path / "empty.jsonl", "\n\n")
    with pytest.raises(DataError, match=rf"no records in '{empty}'"):
        read_records(empty)
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match=r"no \.jsonl, \.json, \.csv, \.parquet files"):
        read_records(str(tmp_path / "sub"))
    with pytest.raises(DataError, match="unsupported file type"):
        read_records(write(tmp_path / "notes.txt", "x"))


def test_unloadable_dataset_name_suggests_a_local_file():
    with pytest.raises(DataError, match=r"cannot load data set 'no-such-org/no-such-set'.*local"):
        read_records("no-such-org/no-such-set")


def test_split_is_deterministic_and_disjoint():
    records = [Record({"i": i}, f"x:{i}") for i in range(20)]
    train, evals = split_train_eval(records, 0.25, seed=3)
    assert (train, evals) == split_train_eval(records, 0.25, seed=3)
    assert len(evals) == 5 and len(train) == 15
    assert sorted(r.fields["i"] for r in train + evals) == list(range(20))
    assert split_train_eval(records, 0.25, seed=4)[1] != evals
    assert split_train_eval(records, 0.0, seed=3) == (records, [])
    with pytest.raises(ConfigError):
        split_train_eval(records, 1.0, seed=3)
    with pytest.raises(DataError, match="cannot hold out"):
        split_train_eval(records[:1], 0.5, seed=3)
