"""Rankings of a policy's own answers: InstructGPT's comparison data, in the demo world.

InstructGPT's labellers ranked several answers that the sft model itself gave to each prompt, so
its reward model learnt to tell apart the answers the policy actually writes. The bundled
rankings (reviewers.py) rank hand-made candidates instead, which never include the briefly tuned
model's commonest mistake (a value of another kind, "roots" to "What color is the brafu?"), and a
reward model trained on them is hacked by RL (README, "Reinforcement learning in the demo world").

    python -m bigft.demo.policy_rankings outputs/demo-sft-40 outputs/demo-rankings

samples `--samples` answers (temperature 1, as RL's rollouts do) to each demo question, formatted
as the run formatted its prompts (an sft run, or a dpo / grpo / ppo run: the same template), and
writes, named after the run:

- <out>/train/<run>.jsonl: the training questions (prompts_train.jsonl), each with its distinct
  answers ranked by the five noisy reviewers ({prompt, responses, rankings}, as the bundled file);
- <out>/eval/<run>.jsonl: the held-out questions, answers in the hidden rule's order (held-out
  accuracy against the truth, on the answers this policy gives).

Rounds of RLHF, as Anthropic's and Llama 2's were run: rank the RL policy's answers into the same
directory, and train the next reward model on every round's rankings (`data.train=<out>/train`,
a directory of files) so that it learns to judge the answers RL has moved the policy to.

Two answers the rule grades alike would be a tie, which makes no pair: one answer per grade is
kept, and a question whose answers all have one grade is left out.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from bigft.config import DEMO_DATA_DIR
from bigft.demo.reviewers import NOISE, REVIEWERS, review
from bigft.demo.truth import score
from bigft.errors import exit_on_user_error
from bigft.generate import model_source, prompt_ids, run_task
from bigft.outputs import load_output
from bigft.redteam.target import generate as sample_answers

SAMPLES = 8
MAX_NEW_TOKENS = 8  # experiment=demo_grpo's task.max_new_tokens


def distinct_grades(prompt: str, answers: list[str], rng: random.Random) -> dict[str, float]:
    """One answer per grade the rule gives (a random one of those with that grade): {answer:
    grade}, in a random order."""
    by_grade: dict[float, list[str]] = {}
    for answer in dict.fromkeys(answers):
        by_grade.setdefault(score(prompt, answer), []).append(answer)
    kept = [(rng.choice(same), grade) for grade, same in by_grade.items()]
    rng.shuffle(kept)  # not best first: the rankings say the order
    return dict(kept)


def ranked(prompt: str, answers: list[str], rng: random.Random, reviewers: int) -> dict | None:
    """The reward task's record: reviewers' rankings, or (reviewers=0) answers best first."""
    graded = distinct_grades(prompt, answers, rng)
    if len(graded) < 2:
        return None
    responses = list(graded)
    truth = sorted(range(len(responses)), key=lambda i: -graded[responses[i]])
    if reviewers == 0:
        return {"prompt": prompt, "responses": [responses[i] for i in truth]}
    rankings = [review(rng, truth, NOISE) for _ in range(reviewers)]
    return {"prompt": prompt, "responses": responses, "rankings": rankings}


class Policy:
    """A finished run's model (sft, dpo, grpo, ppo), answering demo questions in its format."""

    def __init__(self, run_dir: Path) -> None:
        source = model_source(run_dir, merged=False)
        self.task = run_task(run_dir, source)
        self.model, self.tokenizer = load_output(source)
        self.model.eval()

    def sample(self, question: str, count: int) -> list[str]:
        ids = prompt_ids({"instruction": question}, self.tokenizer, self.task, chat=False)
        [answers] = sample_answers(
            self.model,
            self.tokenizer,
            [ids],
            samples=count,
            max_new_tokens=MAX_NEW_TOKENS,
            temperature=1.0,
        )
        return answers


def demo_questions(file_name: str, limit: int | None = None) -> list[str]:
    """The demo's questions in one of its prompt files (the first `limit` of them, if given)."""
    lines = (DEMO_DATA_DIR / file_name).read_text(encoding="utf-8").splitlines()[:limit]
    return [json.loads(line)["prompt"] for line in lines]


def write_rankings(
    run_dir: Path, out_dir: Path, *, samples: int = SAMPLES, seed: int = 0, limit: int | None = None
) -> dict[str, int]:
    """Write <out_dir>/{train,eval}/<run name>.jsonl; returns each file and its question count."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    policy = Policy(Path(run_dir))
    counts = {}
    for part, prompts, reviewers in (
        ("train", "prompts_train.jsonl", REVIEWERS),
        ("eval", "prompts_eval.jsonl", 0),
    ):
        records = [
            ranked(q, policy.sample(q, samples), rng, reviewers)
            for q in demo_questions(prompts, limit)
        ]
        rows = [r for r in records if r is not None]
        path = out_dir / part / f"{Path(run_dir).resolve().name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        counts[path] = len(rows)
    return counts


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bigft.demo.policy_rankings", description=__doc__.splitlines()[0]
    )
    parser.add_argument("run", type=Path, help="a finished sft (or dpo, grpo, ppo) run of the demo")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--samples", type=int, default=SAMPLES, help="answers sampled per question")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="only the first LIMIT questions of each file")
    args = parser.parse_args(argv)
    counts = write_rankings(
        args.run, args.out_dir, samples=args.samples, seed=args.seed, limit=args.limit
    )
    for path, count in counts.items():
        print(f"{path}: {count} ranked questions")


if __name__ == "__main__":
    main()
