"""What a demo reward model knows: every bare value scored for each held-out question.

    python benchmarks/demo_rm_probe.py outputs/demo-reward-sft [RUN ...]

For each of the 240 held-out questions (prompts_eval.jsonl) it scores the 24 bare values of the
demo world and prints, per reward model: how often its favourite value is of the kind asked, how
often it orders a value of the kind asked above one of another kind, and how often the right value
above a wrong one of the kind asked. The first two are the form of an answer; the last is the facts:
what RL against the model can be taught about each (results/demo_rl.md).
"""

from __future__ import annotations

import argparse
import json

from bigft.config import DEMO_DATA_DIR
from bigft.demo.truth import asked, world
from bigft.demo.world import ATTRIBUTES
from bigft.rl.reward_model import RewardModelScorer

VALUES = [(attr, value) for attr, values in ATTRIBUTES.items() for value in values]
WORDS = [value for _, value in VALUES]


def held_out_prompts() -> list[str]:
    lines = (DEMO_DATA_DIR / "prompts_eval.jsonl").read_text().splitlines()
    return [json.loads(line)["prompt"] for line in lines]


def share(pairs: list[tuple[float, float]]) -> float:
    """The share of (should be higher, should be lower) pairs in that order."""
    return sum(a > b for a, b in pairs) / len(pairs)


def probe(run: str) -> dict[str, float]:
    scorer = RewardModelScorer(run, batch_size=len(VALUES))
    favourite = kind = facts = 0.0
    prompts = held_out_prompts()
    for prompt in prompts:
        name, attr = asked(prompt)
        rewards = scorer.score([prompt] * len(WORDS), WORDS).tolist()
        scores = dict(zip(VALUES, rewards, strict=True))
        favourite += max(scores, key=scores.get)[0] == attr
        asked_kind = [s for (a, _), s in scores.items() if a == attr]
        other_kind = [s for (a, _), s in scores.items() if a != attr]
        kind += share([(x, y) for x in asked_kind for y in other_kind])
        right = world()[name][attr]
        wrong = [s for (a, v), s in scores.items() if a == attr and v != right]
        facts += share([(scores[(attr, right)], w) for w in wrong])
    n = len(prompts)
    return {
        "favourite_of_kind": favourite / n,
        "kind_order": kind / n,
        "right_over_wrong": facts / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="reward model run directories or model paths")
    for run in parser.parse_args().runs:
        p = probe(run)
        print(
            f"{run}: favourite value of the kind asked {100 * p['favourite_of_kind']:.1f}%, "
            f"kind asked above another {100 * p['kind_order']:.1f}%, "
            f"right value above a wrong one of the kind {100 * p['right_over_wrong']:.1f}%"
        )


if __name__ == "__main__":
    main()
