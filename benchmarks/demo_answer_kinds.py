"""What a demo policy answers: its greedy answers to the 240 held-out questions, by kind.

    python benchmarks/demo_answer_kinds.py outputs/demo-sft-40 [RUN ...]

For each run (sft, dpo, grpo or ppo), its truth score and how many answers are right (the rule's
0.5 and above), a wrong value of the kind asked, a bare value of another kind ("roots" to "What
color is the brafu?") or none of these, and its commonest answers: where a reward model that knows
the kind but not the facts leads RL (results/demo_rl.md).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from bigft.demo.policy_rankings import MAX_NEW_TOKENS, Policy, demo_questions
from bigft.demo.truth import RIGHT_OTHER, asked, score
from bigft.demo.world import ATTRIBUTES
from bigft.generate import prompt_ids
from bigft.models.decode import greedy_answers


def kind_of(question: str, answer: str) -> str:
    grade = score(question, answer)
    if grade >= RIGHT_OTHER:
        return "right"
    if grade > 0:
        return "wrong value"
    _, attr = asked(question)
    word = answer.strip().lower().removesuffix(".")
    other = any(word in values for a, values in ATTRIBUTES.items() if a != attr)
    return "another kind" if other else "no answer"


def describe(run: Path) -> str:
    policy = Policy(run)
    questions = demo_questions("prompts_eval.jsonl")
    ids = [
        prompt_ids({"instruction": q}, policy.tokenizer, policy.task, chat=False) for q in questions
    ]
    answers = greedy_answers(
        policy.model,
        policy.tokenizer,
        ids,
        max_new_tokens=MAX_NEW_TOKENS,
        pad_id=policy.tokenizer.pad_token_id,
    )
    truth = sum(score(q, a) for q, a in zip(questions, answers, strict=True)) / len(questions)
    kinds = Counter(kind_of(q, a) for q, a in zip(questions, answers, strict=True))
    common = Counter(a.strip().lower() for a in answers).most_common(4)
    return f"{run.name}: truth {truth:.3f}, {dict(kinds)}, commonest {common}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    for run in parser.parse_args().runs:
        print(describe(run), flush=True)


if __name__ == "__main__":
    main()
