"""The demo's preference data: candidate answers ranked by simulated, noisy reviewers.

For each question about a creature, a few candidate answers are drawn from the kinds the hidden
rule tells apart (bigft/demo/truth.py), and several reviewers rank them. A reviewer follows the
rule, except that on a share `noise` of the prompts they are careless and rank the answers in a
random order. One careless ranking gets half of its pairs wrong, so a single reviewer's pairs are
wrong about `noise / 2` of the time, while the consensus of several reviewers is nearly always the
rule's own order: what `task.aggregate` is for.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bigft.demo.truth import glossary_line
from bigft.demo.world import ATTRIBUTES, PROSE, QUESTIONS, Creature

REVIEWERS = 5
NOISE = 0.5  # the share of prompts a reviewer ranks at random
CANDIDATES = 4  # answers per prompt, all of different kinds, so the rule has no ties
KINDS = ("right_sentence", "right_word", "right_other", "wrong_sentence", "wrong_word", "junk")


@dataclass(frozen=True)
class Ranked:
    prompt: str
    responses: list[str]
    truth: list[int]  # indices into responses, best first, by the hidden rule
    rankings: list[list[int]]  # one per reviewer


def sentence(rng: random.Random, creature: Creature, attr: str, value: str) -> str:
    return rng.choice(PROSE[attr]).format(n=creature.name, v=value, V=value.capitalize())


def junk(rng: random.Random, creature: Creature, attr: str) -> str:
    """An answer that commits to no value of the kind asked: off-topic, hedging or word salad."""
    style = rng.randrange(3)
    if style == 0:
        other = rng.choice([a for a in ATTRIBUTES if a != attr])
        return sentence(rng, creature, other, creature.facts[other])
    if style == 1:
        first, second = rng.sample(ATTRIBUTES[attr], 2)
        return f"{first} or {second}"
    words = rng.choice(QUESTIONS[attr]).format(n=creature.name).rstrip("?").split()
    rng.shuffle(words)
    return " ".join(words)


def candidate(rng: random.Random, kind: str, creature: Creature, attr: str) -> str:
    right = creature.facts[attr]
    wrong = rng.choice([v for v in ATTRIBUTES[attr] if v != right])
    return {
        "right_sentence": lambda: sentence(rng, creature, attr, right),
        "right_word": lambda: right,
        "right_other": lambda: glossary_line(right, attr),
        "wrong_sentence": lambda: sentence(rng, creature, attr, wrong),
        "wrong_word": lambda: wrong,
        "junk": lambda: junk(rng, creature, attr),
    }[kind]()


def review(rng: random.Random, truth: list[int], noise: float) -> list[int]:
    """One reviewer's ranking: the rule's order, or on a share `noise` of prompts a random one."""
    if rng.random() < noise:
        return rng.sample(truth, len(truth))
    return list(truth)


def ranked_question(
    rng: random.Random,
    creature: Creature,
    attr: str,
    wording: int,
    *,
    reviewers: int = REVIEWERS,
    noise: float = NOISE,
) -> Ranked:
    kinds = rng.sample(KINDS, CANDIDATES)  # in a random order: responses are not best first
    responses = [candidate(rng, kind, creature, attr) for kind in kinds]
    truth = sorted(range(len(kinds)), key=lambda i: KINDS.index(kinds[i]))
    rankings = [review(rng, truth, noise) for _ in range(reviewers)]
    prompt = QUESTIONS[attr][wording].format(n=creature.name)
    return Ranked(prompt, responses, truth, rankings)


def preference_sets(
    rng: random.Random, trained: list[Creature], held_out: list[Creature]
) -> dict[str, list[dict]]:
    """The rows of every preference file (see bigft/demo/__init__.py), keyed by file name."""
    train = [
        ranked_question(rng, c, attr, w)
        for c in trained
        for attr in ATTRIBUTES
        for w in range(len(QUESTIONS[attr]))
    ]
    rng.shuffle(train)
    evals = [
        ranked_question(rng, c, attr, w, reviewers=0)
        for c in held_out
        for attr in ATTRIBUTES
        for w in range(len(QUESTIONS[attr]))
    ]

    def ordered(r: Ranked, order: list[int]) -> dict:
        return {"prompt": r.prompt, "responses": [r.responses[i] for i in order]}

    return {
        "preferences_train.jsonl": [
            {"prompt": r.prompt, "responses": r.responses, "rankings": r.rankings} for r in train
        ],
        # Reviewer 0 alone, best first: the same prompts and answers, one noisy opinion.
        "preferences_train_single.jsonl": [ordered(r, r.rankings[0]) for r in train],
        "preferences_eval.jsonl": [ordered(r, r.truth) for r in evals],
        "prompts_train.jsonl": [{"prompt": r.prompt} for r in train],
        "prompts_eval.jsonl": [{"prompt": r.prompt} for r in evals],
    }
