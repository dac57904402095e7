"""Messages that used to mislead: each names what is really wrong."""

from __future__ import annotations

import json
import re

import pytest
from omegaconf import OmegaConf

from bigft.config.schema import ModelConfig, TaskConfig, TaskName
from bigft.data.readers import Record, read_records
from bigft.errors import ConfigError, DataError
from bigft.models.load import check_max_length, load_tokenizer
from bigft.tasks import build_task


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".jsonl", '{"text": "a"}\n{"text": "b"}\n'),
        (".json", '[{"text": "a"}, {"text": "b"}]'),
        (".csv", "text\na\nb\n"),
    ],
)
def test_a_utf8_file_with_a_bom_is_read(tmp_path, suffix, text):
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert [r.fields for r in read_records(str(path))] == [{"text": "a"}, {"text": "b"}]


def test_a_bom_inside_a_jsonl_file_is_still_an_error_naming_its_line(tmp_path):
    path = tmp_path / "late.jsonl"
    path.write_bytes(b'{"text": "a"}\n\xef\xbb\xbf{"text": "b"}\n')
    with pytest.raises(DataError, match=re.escape(f"{path}:2: invalid JSON")):
        read_records(str(path))


def test_a_null_field_is_called_null_not_missing(tiny_tokenizer):
    task = build_task(OmegaConf.structured(TaskConfig(name=TaskName.sft)), tiny_tokenizer)
    with pytest.raises(DataError, match=r"a\.jsonl:3: field 'output' is null; expected text"):
        task.encode(Record({"instruction": "q", "output": None}, "a.jsonl:3"))
    classify = OmegaConf.structured(TaskConfig(name=TaskName.classify, labels=["a", "b"]))
    with pytest.raises(DataError, match="b:4: field 'label' is null"):
        build_task(classify, tiny_tokenizer).encode(Record({"text": "x", "label": None}, "b:4"))


def test_a_missing_model_path_is_named_model_path_not_tokenizer(tmp_path):
    cfg = OmegaConf.structured(ModelConfig(path=str(tmp_path / "nope")))
    expected = f"model.path='{tmp_path}/nope' does not exist"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_tokenizer(cfg)
    cfg.tokenizer = str(tmp_path / "tok")
    with pytest.raises(ConfigError, match=re.escape(f"model.tokenizer='{tmp_path}/tok'")):
        load_tokenizer(cfg)


def test_max_length_longer_than_the_model_positions_is_refused(tiny_llama_dir):
    positions = json.loads((tiny_llama_dir / "config.json").read_text())["max_position_embeddings"]
    cfg = OmegaConf.structured(ModelConfig(path=str(tiny_llama_dir)))
    check_max_length(cfg, positions)  # exactly the positions: fine
    expected = f"task.max_length={positions + 1} is longer than the model's {positions} positions"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        check_max_length(cfg, positions + 1)
