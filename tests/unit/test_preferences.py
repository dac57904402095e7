"""Preference records: reviewers' judgements, pairs, consensus and agreement, by hand."""

from __future__ import annotations

import math

import pytest

from bigft.data.preferences import (
    Agreement,
    Judged,
    borda,
    mean_rank,
    pairs_of,
    preference_rankings,
    read_judged,
)
from bigft.data.readers import Record
from bigft.errors import DataError


def rec(**fields) -> Record:
    return Record(fields, "prefs.jsonl:7")


def test_every_format_becomes_scores_per_reviewer():
    assert read_judged(rec(responses=["a", "b", "c"])).scores == [[2, 1, 0]]
    assert read_judged(rec(chosen="y", rejected="n")) == Judged(["y", "n"], [[1, 0]])
    ranked = read_judged(rec(responses=["a", "b", "c"], rankings=[[2, 0, 1], [0, 1, 2]]))
    assert ranked.scores == [[1, 0, 2], [2, 1, 0]]
    # A flat list is one reviewer's.
    assert read_judged(rec(responses=["a", "b"], rankings=[1, 0])).scores == [[0, 1]]
    assert read_judged(rec(responses=["a", "b"], scores=[[0.2, 3]])).scores == [[0.2, 3.0]]


def test_a_tie_makes_no_pair():
    assert pairs_of([3.0, 1.0, 2.0]) == [(0, 1), (0, 2), (2, 1)]
    assert pairs_of([1.0, 1.0, 0.0]) == [(0, 2), (1, 2)]
    assert pairs_of([5.0, 5.0]) == []


def test_borda_and_mean_rank_agree_without_ties_and_differ_with_them():
    rankings = [[2, 1, 0], [0, 2, 1], [1, 2, 0]]  # scores per reviewer, higher is better
    assert borda(rankings) == [2 + 0 + 1, 1 + 2 + 2, 0 + 1 + 0]
    assert mean_rank(rankings) == pytest.approx([-(0 + 2 + 1) / 3, -(1 + 0 + 0) / 3, -5 / 3])
    assert pairs_of(borda(rankings)) == pairs_of(mean_rank(rankings)) == [(1, 0), (0, 2), (1, 2)]
    # The first reviewer ties a and b. Borda counts the tie as a loss for both (a then ties c);
    # mean rank as half a loss (a stays above c, whom the first reviewer put last).
    tied = [[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]]
    assert borda(tied) == [1 + 0, 1 + 2, 0 + 1]
    assert mean_rank(tied) == pytest.approx([-(0.5 + 2) / 2, -(0.5 + 0) / 2, -(2 + 1) / 2])
    assert pairs_of(borda(tied)) == [(1, 0), (1, 2)]
    assert pairs_of(mean_rank(tied)) == [(1, 0), (0, 2), (1, 2)]


def test_aggregates_give_one_consensus_or_every_reviewers_rankings():
    judged = Judged(["a", "b", "c"], [[2, 1, 0], [1, 2, 0], [2, 1, 0]])
    assert preference_rankings(judged, "borda") == [[(0, 1), (0, 2), (1, 2)]]
    assert preference_rankings(judged, "mean_rank") == [[(0, 1), (0, 2), (1, 2)]]
    assert preference_rankings(judged, "pairs") == [
        [(0, 1), (0, 2), (1, 2)],
        [(1, 0), (0, 2), (1, 2)],
        [(0, 1), (0, 2), (1, 2)],
    ]
    # A reviewer who tied everything adds no ranking.
    assert preference_rankings(Judged(["a", "b"], [[1, 1], [1, 0]]), "pairs") == [[(0, 1)]]


def test_agreement_counts_pairs_both_reviewers_ordered():
    agreement = Agreement()
    agreement.add([[2, 1, 0], [2, 0, 1]])  # agree on (a,b), (a,c); disagree on (b,c)
    agreement.add([[1, 1, 0], [0, 1, 2]])  # (a,b) tied by the first: only 2 compared, 0 agree
    agreement.add([[1, 0]])  # one reviewer: nothing to compare
    assert (agreement.records, agreement.reviewers) == (2, 4)
    assert (agreement.agreeing, agreement.compared) == (2, 5)
    assert agreement.rate == pytest.approx(0.4)
    assert math.isnan(Agreement().rate)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"responses": ["a"]}, "field 'responses' must be a list of at least 2 responses"),
        ({"responses": "a, b"}, "field 'responses' must be a list of at least 2"),
        ({"responses": ["a", ["b"]]}, r"responses\[1\] must be text, got list"),
        ({"responses": ["a", "b"], "rankings": [[0, 2]]}, "index 2 is out of range for 2"),
        ({"responses": ["a", "b"], "rankings": [[-1, 0]]}, "index -1 is out of range"),
        ({"responses": ["a", "b", "c"], "rankings": [[1, 1, 0]]}, "is not a permutation of 0..2"),
        ({"responses": ["a", "b", "c"], "rankings": [[1, 0]]}, "is not a permutation of 0..2"),
        ({"responses": ["a", "b"], "rankings": []}, "one list of indices into 'responses' per"),
        ({"responses": ["a", "b"], "rankings": [[0.5, 1]]}, "one list of indices"),
        ({"responses": ["a", "b"], "scores": [[1, 2, 3]]}, r"scores\[0\] has 3 scores for 2"),
        ({"responses": ["a", "b"], "scores": [[True, 1]]}, "one list of numbers per reviewer"),
        ({"responses": ["a", "b"], "scores": [[1, float("nan")]]}, "not finite"),
        ({"prompt": "Q"}, r"no 'responses' or 'chosen'/'rejected' field \(fields: prompt\)"),
    ],
)
def test_a_bad_record_is_named_with_what_was_expected(fields, message):
    with pytest.raises(DataError, match=r"prefs\.jsonl:7.*" + message):
        read_judged(rec(**fields))
