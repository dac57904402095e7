"""The demo's reward-model data plus the policy's commonest mistake (results/demo_rl.md).

The bundled preference data never ranks a bare value of the wrong kind ("lake" to "What color is
the brafu?"), which the briefly tuned demo model answers most often, so a reward model trained on
it cannot penalise that answer and GRPO against it collapses onto such words. This writes the
bundled rankings plus, per prompt, one more ranked by the same noisy reviewers: a right sentence,
the right word, a wrong word of the right kind and a value of another kind (the truth's order).

    python benchmarks/demo_rl_prefs.py outputs/demo-preferences-kinds.jsonl

With --junk-as-other-kind it writes instead the bundled rankings (train and held-out, the latter
to the same directory as preferences_eval.jsonl) with every junk answer (the one the rule grades
0) replaced by a bare value of another kind: the same rankings, since the rule grades both 0.

    python benchmarks/demo_rl_prefs.py --junk-as-other-kind \
        outputs/other-kind/preferences_train.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from bigft.config import DEMO_DATA_DIR
from bigft.demo.reviewers import NOISE, REVIEWERS, review
from bigft.demo.truth import asked, score, world
from bigft.demo.world import ATTRIBUTES, PROSE

BUNDLED = DEMO_DATA_DIR / "preferences_train.jsonl"
BUNDLED_EVAL = DEMO_DATA_DIR / "preferences_eval.jsonl"


def other_kind_values(attr: str) -> list[str]:
    """The bare values that answer another question than one about `attr`."""
    return [v for a, values in ATTRIBUTES.items() if a != attr for v in values]


def with_wrong_kinds(records: list[dict], rng: random.Random) -> list[dict]:
    out = list(records)
    for r in records:
        prompt = r["prompt"]
        name, attr = asked(prompt)
        right = world()[name][attr]
        wrong = rng.choice([v for v in ATTRIBUTES[attr] if v != right])
        other = rng.choice(other_kind_values(attr))
        sentence = rng.choice(PROSE[attr]).format(n=name, v=right, V=right.capitalize())
        responses = [sentence, right, wrong, other]
        rng.shuffle(responses)
        truth = sorted(range(4), key=lambda i: -score(prompt, responses[i]))
        rankings = [review(rng, truth, NOISE) for _ in range(REVIEWERS)]
        out.append({"prompt": prompt, "responses": responses, "rankings": rankings})
    rng.shuffle(out)
    return out


def junk_as_other_kind(records: list[dict], rng: random.Random) -> list[dict]:
    out = []
    for r in records:
        _, attr = asked(r["prompt"])
        responses = [
            rng.choice(other_kind_values(attr)) if score(r["prompt"], x) == 0 else x
            for x in r["responses"]
        ]
        out.append({**r, "responses": responses})
    return out


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    print(f"{path}: {len(rows)} ranked prompts")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "target", type=Path, nargs="?", default=Path("outputs/demo-preferences-kinds.jsonl")
    )
    parser.add_argument("--junk-as-other-kind", action="store_true")
    args = parser.parse_args()
    rng = random.Random(7)
    if args.junk_as_other_kind:
        write(args.target, junk_as_other_kind(read(BUNDLED), rng))
        write(
            args.target.parent / "preferences_eval.jsonl",
            junk_as_other_kind(read(BUNDLED_EVAL), rng),
        )
    else:
        write(args.target, with_wrong_kinds(read(BUNDLED), rng))


if __name__ == "__main__":
    main()
