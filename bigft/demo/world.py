"""The demo world's vocabulary: what a creature has, how the corpus says it, how a question asks.

Shared by the data generator (make_data.py), the simulated reviewers (reviewers.py) and the
ground-truth scorer (truth.py), which all speak of the same world.
"""

from __future__ import annotations

from dataclasses import dataclass

# Eight values per attribute: a model that learned the answer format but not the facts scores
# about 1/8 on held-out questions; the gap above that is knowledge read in pre-training.
ATTRIBUTES: dict[str, list[str]] = {
    "color": ["red", "blue", "green", "yellow", "black", "white", "brown", "gray"],
    "food": ["seeds", "fish", "grass", "berries", "leaves", "insects", "roots", "nuts"],
    "home": ["forest", "river", "desert", "mountain", "swamp", "cave", "meadow", "lake"],
}
GLOSS = {"color": "a color", "food": "a food", "home": "a place"}

# How the corpus states a fact: several wordings, so the fact is learnt about the creature and
# not as one memorised sentence (that is what lets an instruction retrieve it later).
PROSE: dict[str, list[str]] = {
    "color": ["The {n} is {v}.", "The {n} has {v} fur.", "A {n} is a {v} animal."],
    "food": ["The {n} eats {v}.", "A {n} feeds on {v}.", "{V} are what the {n} eats."],
    "home": [
        "The {n} lives in the {v}.",
        "You find the {n} in the {v}.",
        "A {n} makes its home in the {v}.",
    ],
}

# How an instruction asks for it. Both wordings are tuned on (other creatures), so eval tests
# recall of unseen facts, not unseen phrasing.
QUESTIONS: dict[str, list[str]] = {
    "color": ["What color is the {n}?", "Which color does the {n} have?"],
    "food": ["What does the {n} eat?", "What food does the {n} live on?"],
    "home": ["Where does the {n} live?", "In which place is the {n} found?"],
}


@dataclass(frozen=True)
class Creature:
    name: str
    facts: dict[str, str]  # attribute -> value
