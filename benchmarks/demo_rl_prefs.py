"""The demo's reward-model data plus the policy's commonest mistake (results/demo_rl.md).

The bundled preference data never ranks a bare value of the wrong kind ("lake" to "What color is
the brafu?"), which the briefly tuned demo model answers most often, so a reward model trained on
it cannot penalise that answer and GRPO against it collapses onto such words. This writes the
bundled rankings plus, per prompt, one more ranked by the same noisy reviewers: a right sentence,
the right word, a wrong word of the right kind and a value of another kind (the truth's order).

    python benchmarks/demo_rl_prefs.py outputs/demo-preferences-kinds.jsonl
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from bigft.config import DEMO_DATA_DIR
from bigft.demo.reviewers import NOISE, REVIEWERS, review
from bigft.demo.truth import asked, score, world
from bigft.demo.world import ATTRIBUTES, PROSE

BUNDLED = DEMO_DATA_DIR / "preferences_train.jsonl"


def with_wrong_kinds(records: list[dict], rng: random.Random) -> list[dict]:
    out = list(records)
    for r in records:
        prompt = r["prompt"]
        name, attr = asked(prompt)
        right = world()[name][attr]
        wrong = rng.choice([v for v in ATTRIBUTES[attr] if v != right])
        other = rng.choice([v for a, vals in ATTRIBUTES.items() if a != attr for v in vals])
        sentence = rng.choice(PROSE[attr]).format(n=name, v=right, V=right.capitalize())
        responses = [sentence, right, wrong, other]
        rng.shuffle(responses)
        truth = sorted(range(4), key=lambda i: -score(prompt, responses[i]))
        rankings = [review(rng, truth, NOISE) for _ in range(REVIEWERS)]
        out.append({"prompt": prompt, "responses": responses, "rankings": rankings})
    rng.shuffle(out)
    return out


def main() -> None:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/demo-preferences-kinds.jsonl")
    records = [json.loads(line) for line in BUNDLED.read_text().splitlines()]
    rows = with_wrong_kinds(records, random.Random(7))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(json.dumps(x) + "\n" for x in rows))
    print(f"{target}: {len(rows)} ranked prompts")


if __name__ == "__main__":
    main()
