"""The demo world's ground truth: the hidden rule its simulated reviewers rank answers by.

`score(prompt, response)` grades an answer to a demo question ("What color is the dibro?") in
[0, 1], knowing every creature's facts (data/world.json). It is what an alignment run is measured
against (`reward.fn=bigft.demo.truth:score`), so that a gain is a gain in truth, not only in what a
learned reward model thinks. The rule, best first:

    1.0  right value, in a complete sentence naming the creature   "The dibro is blue."
    0.7  right value, as a bare word                               "blue"
    0.5  right value, but not a clean answer                        "blue: a color."
    0.2  wrong value, in a fluent sentence naming the creature      "The dibro is red."
    0.1  wrong value, as a bare word                                "red"
    0.0  no single value of the kind asked for                      "The dibro eats seeds."

Correct beats wrong; among correct answers a sentence beats a word; anything that does not commit
to one value of the kind asked for (off-topic, hedging "blue or red", word salad) is worst.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from bigft.demo.world import ATTRIBUTES, GLOSS, PROSE, QUESTIONS

WORLD_FILE = Path(__file__).resolve().parent / "data" / "world.json"

RIGHT_SENTENCE, RIGHT_WORD, RIGHT_OTHER = 1.0, 0.7, 0.5
WRONG_SENTENCE, WRONG_WORD, NO_ANSWER = 0.2, 0.1, 0.0


@functools.cache
def world(path: Path = WORLD_FILE) -> dict[str, dict[str, str]]:
    """Every creature's facts: {name: {attribute: value}} (written by make_data)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))["creatures"]


def _template_regex(template: str, **fill: str) -> str:
    """A regex for one wording: "{n}", "{v}", "{V}" become the given regex pieces."""
    parts = re.split(r"(\{[nvV]\})", template)
    pieces = {"{n}": fill.get("n", ""), "{v}": fill.get("v", ""), "{V}": fill.get("v", "")}
    return "".join(pieces.get(p, re.escape(p)) for p in parts)


def asked(prompt: str) -> tuple[str, str]:
    """(creature, attribute) of the demo question in `prompt` (the last one, if several).

    The prompt may be the bare question or wrapped in a template ("### Instruction:\\n...").
    """
    found = [
        (m.start(), m.group(1), attr)
        for attr, wordings in QUESTIONS.items()
        for wording in wordings
        for m in re.finditer(_template_regex(wording, n=r"(\w+)"), prompt)
        if m.group(1) in world()
    ]
    if not found:
        raise ValueError(f"not a question about a demo creature: {prompt!r}")
    _, name, attr = max(found)
    return name, attr


def _sentence_value(text: str, name: str, attr: str) -> str | None:
    """The value a fluent sentence about `name` gives for `attr`, if `text` is one."""
    values = "(" + "|".join(ATTRIBUTES[attr]) + ")"
    for wording in PROSE[attr]:
        pattern = _template_regex(wording.removesuffix("."), n=re.escape(name), v=values)
        m = re.fullmatch(pattern + r"\.?", text, flags=re.IGNORECASE)
        if m:
            return m.group(1).lower()
    return None


def score(prompt: str, response: str) -> float:
    """The hidden rule's grade of `response` to the demo question in `prompt`, in [0, 1]."""
    name, attr = asked(prompt)
    truth = world()[name][attr]
    text = response.strip()
    said = _sentence_value(text, name, attr)
    if said is not None:
        return RIGHT_SENTENCE if said == truth else WRONG_SENTENCE
    word = text.lower().removesuffix(".")
    if word in ATTRIBUTES[attr]:
        return RIGHT_WORD if word == truth else WRONG_WORD
    mentioned = {w for w in re.findall(r"[a-z]+", text.lower()) if w in ATTRIBUTES[attr]}
    return RIGHT_OTHER if mentioned == {truth} else NO_ANSWER


def glossary_line(value: str, attr: str) -> str:
    """How the corpus glosses a value ("blue: a color."): what the untuned base model writes."""
    return f"{value}: {GLOSS[attr]}."
