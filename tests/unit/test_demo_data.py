"""The bundled demo data: reproducible, and its eval set truly held out."""

from __future__ import annotations

import json
import re

from bigft.config import DEMO_DATA_DIR
from bigft.demo.make_data import generate

FILES = ["corpus.jsonl", "instructions_train.jsonl", "instructions_eval.jsonl"]


def read(name: str, root=DEMO_DATA_DIR) -> list[dict]:
    return [json.loads(line) for line in (root / name).read_text().splitlines()]


def test_generator_rewrites_the_committed_files_byte_for_byte(tmp_path):
    generate(tmp_path)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (DEMO_DATA_DIR / name).read_bytes(), name


def creature(row: dict) -> str:
    # "What color is the dibro?", "What does the dibro eat?", "In which place is the dibro found?"
    return re.search(r"\bthe (\w+)", row["instruction"]).group(1)


def test_eval_questions_are_about_creatures_the_tuning_set_never_mentions():
    train, evaluation = read("instructions_train.jsonl"), read("instructions_eval.jsonl")
    tuned_on = {creature(r) for r in train}
    held_out = {creature(r) for r in evaluation}
    assert len(tuned_on) == 80 and len(held_out) == 40
    assert not tuned_on & held_out
    assert not any(name in r["instruction"] for r in train for name in held_out)
    # Their facts are in the pre-training corpus, as prose only (no instruction format).
    corpus = " ".join(r["text"] for r in read("corpus.jsonl"))
    assert all(name in corpus for name in held_out)
    assert "### Instruction" not in corpus
