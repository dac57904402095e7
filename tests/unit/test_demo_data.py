"""The bundled demo data: reproducible, its eval set truly held out, its reviewers as noisy as
configured, and the ground-truth scorer following the rule the reviewers follow."""

from __future__ import annotations

import json
import random
import re
from itertools import combinations

import pytest

from bigft.config import DEMO_DATA_DIR
from bigft.demo import reviewers, truth
from bigft.demo.make_data import generate

FILES = [
    "corpus.jsonl",
    "instructions_train.jsonl",
    "instructions_eval.jsonl",
    "world.json",
    "preferences_train.jsonl",
    "preferences_train_single.jsonl",
    "preferences_eval.jsonl",
    "prompts_train.jsonl",
    "prompts_eval.jsonl",
]


def read(name: str, root=DEMO_DATA_DIR) -> list[dict]:
    return [json.loads(line) for line in (root / name).read_text().splitlines()]


def test_generator_rewrites_the_committed_files_byte_for_byte(tmp_path):
    generate(tmp_path)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (DEMO_DATA_DIR / name).read_bytes(), name


def creature(row: dict) -> str:
    # "What color is the dibro?", "What does the dibro eat?", "In which place is the dibro found?"
    return re.search(r"\bthe (\w+)", row.get("instruction") or row["prompt"]).group(1)


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


def test_preference_eval_is_about_creatures_no_preference_or_tuning_data_mentions():
    held_out = set(json.loads((DEMO_DATA_DIR / "world.json").read_text())["held_out"])
    assert held_out == {creature(r) for r in read("instructions_eval.jsonl")}
    for name in ("preferences_eval.jsonl", "prompts_eval.jsonl"):
        assert {creature(r) for r in read(name)} == held_out, name
    tuned_on = {creature(r) for r in read("instructions_train.jsonl")}
    trained = ("preferences_train.jsonl", "preferences_train_single.jsonl", "prompts_train.jsonl")
    for name in trained:
        text = (DEMO_DATA_DIR / name).read_text()
        assert not set(re.findall(r"\w+", text)) & held_out, name
        assert {creature(r) for r in read(name)} == tuned_on, name


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("The dibro is blue.", 1.0),
        ("A dibro is a blue animal", 1.0),  # the final period is optional
        ("  blue\n", 0.7),
        ("Blue.", 0.7),
        ("blue: a color.", 0.5),  # the untuned base model's glossary habit
        ("It is blue, I think.", 0.5),
        ("The dibro has red fur.", 0.2),
        ("red", 0.1),
        ("The mitu is red.", 0.0),  # another creature's sentence: no answer about the dibro
        ("blue or red", 0.0),
        ("The dibro eats seeds.", 0.0),
        ("", 0.0),
    ],
)
def test_the_scorer_grades_answers_by_the_hidden_rule(response, expected):
    facts = truth.world()["dibro"]
    assert facts["color"] == "blue"  # the bundled world (instructions_train: dibro is blue)
    assert truth.score("What color is the dibro?", response) == expected


def test_the_scorer_reads_templated_prompts_and_refuses_other_questions():
    prompt = "### Instruction:\nWhere does the dibro live?\n\n### Response:\n"
    home = truth.world()["dibro"]["home"]
    assert truth.score(prompt, f"You find the dibro in the {home}.") == 1.0
    assert truth.score(prompt, home) == 0.7
    with pytest.raises(ValueError, match="not a question about a demo creature"):
        truth.score("What color is the sky?", "blue")


def test_the_truth_order_of_every_eval_ranking_is_strictly_by_the_scorer():
    for row in read("preferences_eval.jsonl"):
        scores = [truth.score(row["prompt"], r) for r in row["responses"]]
        assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores), row


def _truth_order(row: dict) -> list[int]:
    scores = [truth.score(row["prompt"], r) for r in row["responses"]]
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def _wrong_pairs(ranking: list[int], order: list[int]) -> float:
    position = {r: k for k, r in enumerate(ranking)}
    pairs = list(combinations(order, 2))  # (better, worse) by the rule
    return sum(position[a] > position[b] for a, b in pairs) / len(pairs)


@pytest.mark.parametrize("noise", [0.0, 0.2, 0.5])
def test_a_reviewer_is_careless_on_the_configured_share_of_prompts(noise):
    rng = random.Random(0)
    order = [0, 1, 2, 3]
    draws = [reviewers.review(rng, order, noise) for _ in range(20_000)]
    # A careless ranking is a uniform permutation: it gets half the pairs wrong on average and
    # equals the rule's order 1 time in 4! = 24.
    assert sum(d != order for d in draws) / len(draws) == pytest.approx(noise * 23 / 24, abs=0.01)
    wrong = sum(_wrong_pairs(d, order) for d in draws) / len(draws)
    assert wrong == pytest.approx(noise / 2, abs=0.01)


def test_the_bundled_reviewers_have_the_configured_noise():
    rows = read("preferences_train.jsonl")
    rankings = [(r, _truth_order(row)) for row in rows for r in row["rankings"]]
    assert all(len(row["rankings"]) == reviewers.REVIEWERS for row in rows)
    wrong = sum(_wrong_pairs(r, order) for r, order in rankings) / len(rankings)
    assert wrong == pytest.approx(reviewers.NOISE / 2, abs=0.02)
    # The single-reviewer file is reviewer 0's view of the same prompts and answers.
    for row, single in zip(rows, read("preferences_train_single.jsonl"), strict=True):
        assert single["responses"] == [row["responses"][i] for i in row["rankings"][0]]
