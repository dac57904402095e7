"""Rankings of a policy's own answers (bigft/demo/policy_rankings.py): one answer per grade of the
hidden rule, reviewers' rankings of them for training, the rule's order for evaluation."""

from __future__ import annotations

import random

from bigft.demo.policy_rankings import distinct_grades, ranked
from bigft.demo.reviewers import REVIEWERS
from bigft.demo.truth import score, world
from bigft.demo.world import ATTRIBUTES, QUESTIONS

NAME = sorted(world())[0]
RIGHT = world()[NAME]["color"]
WRONG = next(v for v in ATTRIBUTES["color"] if v != RIGHT)
OTHER_KIND = ATTRIBUTES["food"][0]
PROMPT = QUESTIONS["color"][0].format(n=NAME)


def test_one_answer_per_grade_and_none_twice():
    wrong_too = next(v for v in ATTRIBUTES["color"] if v not in (RIGHT, WRONG))
    answers = [RIGHT, WRONG, wrong_too, RIGHT, OTHER_KIND, WRONG]
    kept = distinct_grades(PROMPT, answers, random.Random(0))
    assert sorted(score(PROMPT, a) for a in kept) == [0.0, 0.1, 0.7]
    assert RIGHT in kept and OTHER_KIND in kept


def test_training_record_has_every_reviewers_ranking_of_the_kept_answers():
    record = ranked(PROMPT, [OTHER_KIND, WRONG, RIGHT], random.Random(0), REVIEWERS)
    assert record["prompt"] == PROMPT
    assert sorted(record["responses"]) == sorted([OTHER_KIND, WRONG, RIGHT])
    assert len(record["rankings"]) == REVIEWERS
    assert all(sorted(r) == [0, 1, 2] for r in record["rankings"])
    # A careful reviewer ranks by the rule: the right word, the wrong one, then another kind's.
    truth = [record["responses"].index(a) for a in (RIGHT, WRONG, OTHER_KIND)]
    assert truth in record["rankings"]


def test_eval_record_is_best_first_and_a_question_of_one_grade_is_left_out():
    record = ranked(PROMPT, [OTHER_KIND, WRONG, RIGHT], random.Random(0), reviewers=0)
    assert record == {"prompt": PROMPT, "responses": [RIGHT, WRONG, OTHER_KIND]}
    wrong_too = next(v for v in ATTRIBUTES["color"] if v not in (RIGHT, WRONG))
    assert ranked(PROMPT, [WRONG, wrong_too, WRONG], random.Random(0), REVIEWERS) is None
