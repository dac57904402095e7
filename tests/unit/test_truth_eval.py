"""Ground-truth eval: the win-rate arithmetic and its summable stats, on hand-computed values."""

from __future__ import annotations

import pytest

from bigft.errors import ConfigError
from bigft.tasks.truth_eval import TruthEval, summarize_truth, win_points


def test_a_win_counts_one_a_tie_half_a_loss_nothing():
    assert win_points([0.7, 0.2, 1.0, 0.0], [0.2, 0.2, 0.7, 0.1]) == 2.5
    assert win_points([], []) == 0.0


def test_the_first_scores_are_the_baseline_and_stats_add_across_batches():
    truth = TruthEval("bigft.demo.truth:score")
    prompts = ["What color is the brafu?", "What does the brafu eat?"]
    # The first evaluation is the baseline: compared with itself, every prompt ties.
    first = truth.stats(prompts, ["The brafu lives in the forest.", "roots"])
    assert first == {"truth_score_sum": pytest.approx(0.7), "generated": 2.0, "wins": 1.0}
    assert summarize_truth(first) == {"truth_score": pytest.approx(0.35), "win_rate": 50.0}
    # Later: a right sentence beats no answer (win), a wrong word loses to the right word.
    a = truth.stats(prompts[:1], ["A brafu is a white animal."])
    b = truth.stats(prompts[1:], ["nuts"])
    summed = {k: a[k] + b[k] for k in a}
    assert summed == {"truth_score_sum": pytest.approx(1.1), "generated": 2.0, "wins": 1.0}
    assert summarize_truth(summed) == {"truth_score": pytest.approx(0.55), "win_rate": 50.0}


def test_no_answers_no_metrics():
    assert summarize_truth({"loss_sum": 1.0, "units": 2.0}) == {}


def test_a_wrong_score_function_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"task\.eval_score_fn='bigft\.demo\.truth:nope'"):
        TruthEval("bigft.demo.truth:nope")
