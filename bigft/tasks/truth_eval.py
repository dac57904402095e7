"""Held-out evaluation against a ground truth: greedy answers scored by a function, and a win rate.

An alignment run is proven by a gain in truth, not in what a learned reward thinks (see
bigft/demo/truth.py): `task.eval_generate=true task.eval_score_fn=<module>:<function>` makes
the eval generate a greedy answer to each held-out prompt and score it with that function
(`score(prompt, response) -> float`, as `reward.fn` reads it, bigft/rl/rewards.py).

The win rate compares each prompt's answer with the starting model's answer to the same prompt:
1 for a higher score, 0.5 for an equal one, 0 for a lower one. The starting model's scores are
the first ones a `TruthEval` sees for each prompt, which are the starting model's when the run
evaluates before its first step (`trainer.eval_at_start=true`); that first evaluation then
compares the model with itself, 50% by construction. They live in the process, not the run
directory: a resumed run compares with its first evaluation after resuming.

Everything returned is a sum over prompts, so the loop can add the stats of micro-batches and
ranks before `summarize_truth` divides.
"""

from __future__ import annotations

from collections.abc import Sequence

from bigft.rl.rewards import FunctionReward, load_function

SCORE_KEY = "task.eval_score_fn"


def win_points(scores: Sequence[float], initial: Sequence[float]) -> float:
    """Wins over the initial answers' scores, a tie counting half."""
    return sum(
        1.0 if s > s0 else 0.5 if s == s0 else 0.0 for s, s0 in zip(scores, initial, strict=True)
    )


class TruthEval:
    """Scores answers with the ground-truth function; remembers each prompt's first score."""

    def __init__(self, spec: str) -> None:
        self.scorer = FunctionReward(load_function(spec, key=SCORE_KEY))
        self.scorer.spec = spec
        self.initial: dict[str, float] = {}

    def stats(self, prompts: list[str], answers: list[str]) -> dict[str, float]:
        """Summable stats of one batch: score sum, answers, and wins over the initial answers."""
        scores = self.scorer.score(prompts, answers).tolist()
        for prompt, score in zip(prompts, scores, strict=True):
            self.initial.setdefault(prompt, score)
        initial = [self.initial[p] for p in prompts]
        return {
            "truth_score_sum": float(sum(scores)),
            "generated": float(len(scores)),
            "wins": win_points(scores, initial),
        }


def summarize_truth(stats: dict[str, float]) -> dict[str, float]:
    """eval/truth_score (mean score) and eval/win_rate (% against the initial answers)."""
    if not stats.get("generated"):
        return {}
    return {
        "truth_score": stats["truth_score_sum"] / stats["generated"],
        "win_rate": 100.0 * stats["wins"] / stats["generated"],
    }
