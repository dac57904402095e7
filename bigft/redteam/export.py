"""From findings to training data that bigft's tasks read as they are, with a held-out split.

Written to `<out>/export/`:

- preferences.jsonl  {prompt, chosen, rejected}      task=dpo (prompt: text, or chat messages)
- reward.jsonl       {prompt, chosen, rejected}      task=reward
- sft.jsonl          {instruction, output} | {messages}  task=sft
- rl_prompts.jsonl   {prompt, target_behavior}       task=ppo/grpo, with
                     reward.fn=bigft.redteam.judges:harmlessness
- held_out_attacks.jsonl  the attacks kept out of all of the above, as an attack file for the
                     after-scan (`attacks.files=[.../held_out_attacks.jsonl]`)

chosen is, in order: a response a person wrote for the attack, the best of the target's own
samples that every judge passed, or a refusal written from `export.refusal`. rejected is each
response that made the attack succeed.

Held out: whole template families and whole categories (so the after-scan measures
generalisation to framings and topics never trained on), plus a fraction of the remaining rows.
Which families/categories are held out is a seeded draw over their sorted names.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from bigft.data.readers import read_records
from bigft.errors import DataError
from bigft.redteam.attacks import Attack, write_attacks
from bigft.redteam.findings import attack_outcomes
from bigft.redteam.judges import HARMFUL

EXPORT_SUBDIR = "export"


def held_out_groups(attacks: list[dict[str, Any]], cfg: Any) -> tuple[set[str], set[str]]:
    """(held-out families, held-out categories): the configured lists plus a seeded fraction."""
    picked = []
    for key, names, fraction in (
        ("family", cfg.families, cfg.family_fraction),
        ("category", cfg.categories, cfg.category_fraction),
    ):
        chosen = set(names or [])
        pool = sorted({str(a[key]) for a in attacks} - chosen)
        count = round(fraction * (len(pool) + len(chosen))) - len(chosen)
        if count > 0 and pool:
            chosen |= set(random.Random(f"{cfg.seed}-{key}").sample(pool, min(count, len(pool))))
        picked.append(chosen)
    return picked[0], picked[1]


def is_held_out(attack: dict[str, Any], groups: tuple[set[str], set[str]], cfg: Any) -> bool:
    if attack["family"] in groups[0] or attack["category"] in groups[1]:
        return True
    # By row: a hash of the attack's id, so a row's side never depends on what else was scanned.
    digest = hashlib.sha1(f"{cfg.seed}|{attack['id']}".encode()).hexdigest()
    return int(digest[:8], 16) / 2**32 < cfg.row_fraction


def _prompt_of(attack: dict[str, Any]) -> str | list[dict[str, str]]:
    return attack["messages"] if attack.get("messages") else attack["prompt"]


def _refusal(attack: dict[str, Any], template: str) -> str:
    return template.format(prompt=attack["prompt"], category=attack["category"])


def _passes(finding: dict[str, Any]) -> bool:
    return not finding["success"] and all(
        v["verdict"] != HARMFUL for v in finding["judges"].values()
    )


def _best_passing(samples: list[dict[str, Any]]) -> str | None:
    passing = [f for f in samples if _passes(f) and f["response"].strip()]
    if not passing:
        return None
    # A reward model's score, where there is one, ranks the safe samples; else the first.
    return max(passing, key=lambda f: f["judges"].get("reward_model", {}).get("score", 0.0))[
        "response"
    ]


def training_records(
    findings: list[dict[str, Any]], cfg: Any
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """({file stem: records}, held-out attacks) from the findings and the `export` config."""
    outcomes = attack_outcomes(findings)
    attacks = [a for a, _ in outcomes.values()]
    groups = held_out_groups(attacks, cfg.held_out)
    held = [a for a in attacks if is_held_out(a, groups, cfg.held_out)]
    # The same text can come from two sources (a person's and a template's "direct" attack):
    # held out once, it is held out everywhere.
    held_texts, held_ids = {a["prompt"] for a in held}, {a["id"] for a in held}
    held += [a for a in attacks if a["prompt"] in held_texts and a["id"] not in held_ids]
    held_ids = {a["id"] for a in held}
    by_attack: dict[str, list[dict[str, Any]]] = {}
    for f in findings:
        by_attack.setdefault(f["attack"]["id"], []).append(f)
    files: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("preferences", "reward", "sft", "rl_prompts")
    }
    for attack_id, (attack, succeeded) in outcomes.items():
        if attack_id in held_ids or not succeeded:
            continue
        samples = by_attack[attack_id]
        chosen = attack.get("chosen") or _best_passing(samples) or _refusal(attack, cfg.refusal)
        prompt = _prompt_of(attack)
        for f in samples:
            if f["success"] and f["response"] != chosen:
                files["preferences"].append(
                    {"prompt": prompt, "chosen": chosen, "rejected": f["response"]}
                )
                files["reward"].append(
                    {"prompt": attack["prompt"], "chosen": chosen, "rejected": f["response"]}
                )
        if attack.get("messages"):
            files["sft"].append(
                {"messages": [*attack["messages"], {"role": "assistant", "content": chosen}]}
            )
        else:
            files["sft"].append({"instruction": attack["prompt"], "output": chosen})
        rl = {"prompt": attack["prompt"]}
        if attack.get("target_behavior"):
            rl["target_behavior"] = attack["target_behavior"]
        files["rl_prompts"].append(rl)
    files_with_harmless(files, cfg)
    return files, held


def files_with_harmless(files: dict[str, list[dict[str, Any]]], cfg: Any) -> None:
    """Contrast records from `export.harmless` ({prompt, chosen, rejected?}): the right answer
    over a refusal, so that tuning on refusals does not teach refusing everything."""
    if not cfg.harmless:
        return
    for record in read_records(cfg.harmless):
        where = record.source
        prompt, chosen = record.fields.get("prompt"), record.fields.get("chosen")
        if not isinstance(prompt, str) or not isinstance(chosen, str):
            raise DataError(f"{where}: export.harmless needs text 'prompt' and 'chosen'")
        rejected = record.fields.get("rejected") or cfg.refusal.format(
            prompt=prompt, category="harmless"
        )
        pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        files["preferences"].append(dict(pair))
        files["reward"].append(dict(pair))
        files["sft"].append({"instruction": prompt, "output": chosen})


def write_export(findings: list[dict[str, Any]], out_dir: Path, cfg: Any) -> dict[str, int]:
    """Write the training files and the held-out attack file; their record counts."""
    files, held = training_records(findings, cfg)
    export_dir = Path(out_dir) / EXPORT_SUBDIR
    export_dir.mkdir(parents=True, exist_ok=True)
    for stem, rows in files.items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (export_dir / f"{stem}.jsonl").write_text(text, encoding="utf-8")
    write_attacks(export_dir / "held_out_attacks.jsonl", [Attack.from_dict(a) for a in held])
    counts = {stem: len(rows) for stem, rows in files.items()}
    counts["held_out_attacks"] = len(held)
    return counts
