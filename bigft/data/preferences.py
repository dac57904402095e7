"""Preference records: one prompt's responses as one or several reviewers judged them.

A record gives K responses and either their order (`responses` best first, or `chosen` /
`rejected`), one ordering per reviewer (`rankings: [[2, 0, 1], [0, 2, 1], ...]`, indices into
`responses`, best first) or one score list per reviewer (`scores: [[0.1, 0.9, 0.5], ...]`, higher
is better). Each reviewer's judgement becomes a score per response; pairs come from those scores,
and equal scores (a tie) make no pair. Pure functions, no tokens: tasks build on them.

Aggregation (`task.aggregate`): `pairs` keeps every reviewer's pairs (one ranking per reviewer);
`borda` and `mean_rank` train on one consensus ranking. Borda counts, over reviewers, the
responses each reviewer put strictly below a response; mean_rank averages the response's position,
tied responses sharing the mean of their positions. Without ties the two orders are the same; with
ties Borda counts a tie as a loss, mean rank as half one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from bigft.data.readers import Record
from bigft.errors import DataError

AGGREGATES = ("borda", "mean_rank", "pairs")
FORMATS = (
    "expected {prompt, responses: [best, ..., worst]}, {prompt, chosen, rejected}, "
    "{prompt, responses, rankings: [[best index, ...], ...]} or {prompt, responses, scores: "
    "[[score per response], ...]}; rename your fields with data.fields"
)

Pair = tuple[int, int]  # (better, worse): indices into the responses


@dataclass(frozen=True)
class Judged:
    responses: list[str]
    # One list per reviewer: a score per response, higher is better.
    scores: list[list[float]]


def read_judged(record: Record) -> Judged:
    """The record's responses and every reviewer's scores; DataError naming `record.source`."""
    fields, where = record.fields, record.source
    if "responses" not in fields:
        if "chosen" in fields or "rejected" in fields:
            return Judged(
                [_text(record, k, fields.get(k)) for k in ("chosen", "rejected")], [[1, 0]]
            )
        present = ", ".join(sorted(fields)) or "none"
        raise DataError(
            f"{where}: no 'responses' or 'chosen'/'rejected' field (fields: {present}); {FORMATS}"
        )
    responses = fields["responses"]
    if not isinstance(responses, list) or len(responses) < 2:
        raise DataError(
            f"{where}: field 'responses' must be a list of at least 2 responses, best first "
            f"(or ordered by 'rankings' / 'scores'); got {responses!r}"
        )
    texts = [_text(record, f"responses[{i}]", r) for i, r in enumerate(responses)]
    if "rankings" in fields and "scores" in fields:
        raise DataError(f"{where}: give 'rankings' or 'scores', not both")
    if "rankings" in fields:
        orders = _reviewers(record, "rankings", int)
        return Judged(
            texts, [ranking_scores(record, i, o, len(texts)) for i, o in enumerate(orders)]
        )
    if "scores" in fields:
        lists = _reviewers(record, "scores", (int, float))
        for i, scores in enumerate(lists):
            if len(scores) != len(texts):
                raise DataError(
                    f"{where}: scores[{i}] has {len(scores)} scores for {len(texts)} responses; "
                    "give one score per response, in the order of 'responses'"
                )
            if not all(math.isfinite(x) for x in scores):
                raise DataError(f"{where}: scores[{i}] = {scores} has a score that is not finite")
        return Judged(texts, [[float(s) for s in scores] for scores in lists])
    return Judged(texts, [[float(len(texts) - 1 - i) for i in range(len(texts))]])


def _text(record: Record, where: str, value: Any) -> str:
    if value is None:
        raise DataError(f"{record.source}: missing field {where!r}; {FORMATS}")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{record.source}: {where} must be text, got {type(value).__name__}")
    return str(value)


def _reviewers(record: Record, name: str, kinds: type | tuple[type, ...]) -> list[list]:
    """A list of per-reviewer lists; a flat list is one reviewer's."""
    value = record.fields[name]

    def is_item(x: Any) -> bool:
        return isinstance(x, kinds) and not isinstance(x, bool)

    if isinstance(value, list) and value and all(is_item(x) for x in value):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, list) and all(is_item(x) for x in v) for v in value)
    ):
        what = "indices into 'responses'" if name == "rankings" else "numbers"
        raise DataError(
            f"{record.source}: field {name!r} must be a list with one list of {what} per "
            f"reviewer, e.g. [[2, 0, 1], [0, 2, 1]]; got {value!r}"
        )
    return value


def ranking_scores(record: Record, reviewer: int, order: list[int], k: int) -> list[float]:
    """Scores (best = k - 1) from one ordering, which must be a permutation of range(k)."""
    where = f"{record.source}: rankings[{reviewer}] = {order}"
    for index in order:
        if not 0 <= index < k:
            raise DataError(
                f"{where}: index {index} is out of range for {k} responses (0..{k - 1})"
            )
    if sorted(order) != list(range(k)):
        raise DataError(
            f"{where} is not a permutation of 0..{k - 1}: rank every response exactly once, "
            "best first"
        )
    scores = [0.0] * k
    for position, index in enumerate(order):
        scores[index] = float(k - 1 - position)
    return scores


def pairs_of(scores: list[float]) -> list[Pair]:
    """(better, worse) for every two responses the scores tell apart; a tie makes no pair."""
    pairs = []
    for i, j in combinations(range(len(scores)), 2):
        if scores[i] != scores[j]:
            pairs.append((i, j) if scores[i] > scores[j] else (j, i))
    return pairs


def borda(scores: list[list[float]]) -> list[float]:
    """Per response, summed over reviewers: how many responses the reviewer put strictly below."""
    return [sum(sum(s[i] > x for x in s) for s in scores) for i in range(len(scores[0]))]


def mean_rank(scores: list[list[float]]) -> list[float]:
    """Minus each response's mean position (0 = best; ties share their mean position)."""
    k = len(scores[0])
    ranks = [
        [sum(x > s[i] for x in s) + (sum(x == s[i] for x in s) - 1) / 2 for i in range(k)]
        for s in scores
    ]
    return [-sum(r[i] for r in ranks) / len(ranks) for i in range(k)]


def preference_rankings(judged: Judged, aggregate: str) -> list[list[Pair]]:
    """The rankings to train on, each as its pairs: every reviewer's (`pairs`) or one consensus.

    A ranking without any pair (all tied) is left out.
    """
    if aggregate == "pairs":
        rankings = [pairs_of(s) for s in judged.scores]
    elif aggregate == "borda":
        rankings = [pairs_of(borda(judged.scores))]
    elif aggregate == "mean_rank":
        rankings = [pairs_of(mean_rank(judged.scores))]
    else:
        raise ValueError(f"unknown aggregate {aggregate!r}; choose one of {AGGREGATES}")
    return [r for r in rankings if r]


@dataclass
class Agreement:
    """How often two reviewers of the same prompt order a pair of responses the same way."""

    records: int = 0  # records with at least two reviewers
    reviewers: int = 0  # summed over those records
    agreeing: int = 0
    compared: int = 0  # (reviewer pair, response pair) where neither reviewer tied

    def add(self, scores: list[list[float]]) -> None:
        if len(scores) < 2:
            return
        self.records += 1
        self.reviewers += len(scores)
        for a, b in combinations(scores, 2):
            for i, j in combinations(range(len(a)), 2):
                if a[i] != a[j] and b[i] != b[j]:
                    self.compared += 1
                    self.agreeing += (a[i] > a[j]) == (b[i] > b[j])

    @property
    def rate(self) -> float:
        return self.agreeing / self.compared if self.compared else float("nan")
