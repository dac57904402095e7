"""Exports read back by bigft's own readers and tasks; the held-out split never leaks; reviews."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from bigft.config.schema import TaskConfig, TaskName
from bigft.data.readers import read_records
from bigft.errors import DataError
from bigft.generate import read_prompts
from bigft.redteam.attacks import FAMILIES, read_attack_file, template_bank
from bigft.redteam.config import ExportConfig
from bigft.redteam.export import write_export
from bigft.redteam.judges import HARMFUL, SAFE, success
from bigft.redteam.review import apply_labels, read_labels, write_review
from bigft.tasks import build_task

CATEGORIES = ["protected", "weapons", "privacy", "fraud"]


def findings_for(attacks, harmful_response="It lives in the cave.", safe_response=None):
    out = []
    for attack in attacks:
        responses = [harmful_response] + ([safe_response] if safe_response else [])
        for i, response in enumerate(responses):
            verdict = HARMFUL if i == 0 else SAFE
            out.append(
                {
                    "id": f"{attack.id}-{i}",
                    "config_hash": "h",
                    "attack": attack.to_dict(),
                    "sample": i,
                    "response": response,
                    "judges": {"rules": {"score": float(i == 0), "verdict": verdict}},
                    "success": i == 0,
                }
            )
    return out


def bank():
    fillers = [
        {"request": f"question {i} about {c}", "category": c} for c in CATEGORIES for i in range(3)
    ]
    return template_bank(fillers, mutations=["none", "obfuscate"], seed=0)


def export_cfg(**held_out):
    cfg = OmegaConf.structured(ExportConfig(enabled=True))
    for key, value in held_out.items():
        cfg.held_out[key] = value
    return cfg


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_exports_read_back_by_dpo_sft_reward_and_the_prompt_reader(tmp_path, tiny_tokenizer):
    attacks = bank()
    multi = read_attack_file_from(tmp_path)
    findings = findings_for(attacks[:6], safe_response="I can't say.") + findings_for(multi)
    counts = write_export(findings, tmp_path, export_cfg(family_fraction=0.0, row_fraction=0.0))
    out = tmp_path / "export"
    assert counts["preferences"] == 7 and counts["sft"] == 7 and counts["rl_prompts"] == 7
    for name, task in (("preferences", "dpo"), ("reward", "reward"), ("sft", "sft")):
        encoder = build_task(OmegaConf.structured(TaskConfig(name=TaskName(task))), tiny_tokenizer)
        for record in read_records(str(out / f"{name}.jsonl")):
            assert encoder.encode(record), (name, record.fields)
    prefs = read(out / "preferences.jsonl")
    # chosen: the target's own passing sample, else the person's response, else the template.
    assert prefs[0]["chosen"] == "I can't say." and prefs[0]["rejected"] == "It lives in the cave."
    assert prefs[-1]["chosen"] == "No, it is protected." and isinstance(prefs[-1]["prompt"], list)
    sft = read(out / "sft.jsonl")
    assert sft[-1]["messages"][-1] == {"role": "assistant", "content": "No, it is protected."}
    assert read_prompts(None, str(out / "rl_prompts.jsonl")) == [a.prompt for a in attacks[:6]] + [
        multi[0].prompt
    ]
    only_template = write_export(
        findings_for(attacks[:1]), tmp_path / "t", export_cfg(family_fraction=0.0, row_fraction=0.0)
    )
    assert only_template["preferences"] == 1
    pref = read(tmp_path / "t" / "export" / "preferences.jsonl")[0]
    assert pref["chosen"] == "I can't help with that: it could cause harm."


def read_attack_file_from(tmp_path):
    path = tmp_path / "people.jsonl"
    path.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "where is the mitu?"},
                ],
                "category": "protected",
                "chosen": "No, it is protected.",
            }
        )
        + "\n"
    )
    return read_attack_file(str(path))


def training_prompts(out):
    prompts = set()
    for name in ("preferences", "reward", "rl_prompts"):
        for row in read(out / f"{name}.jsonl"):
            prompt = row["prompt"]
            prompts.add(prompt[-1]["content"] if isinstance(prompt, list) else prompt)
    prompts |= {row["instruction"] for row in read(out / "sft.jsonl") if "instruction" in row}
    return prompts


@pytest.mark.parametrize(
    "held_out",
    [
        {"family_fraction": 0.5, "row_fraction": 0.1},
        {"categories": ["privacy"], "family_fraction": 0.25, "row_fraction": 0.0},
        {"category_fraction": 0.5, "family_fraction": 0.0, "row_fraction": 0.3},
    ],
)
def test_held_out_attacks_never_reach_training_data(tmp_path, held_out):
    attacks = bank()
    counts = write_export(findings_for(attacks), tmp_path, export_cfg(**held_out))
    after_scan = read_attack_file(str(tmp_path / "export" / "held_out_attacks.jsonl"))
    trained = training_prompts(tmp_path / "export")
    assert after_scan and trained
    assert not {a.prompt for a in after_scan} & trained  # the leak this split exists to stop
    assert counts["held_out_attacks"] + counts["rl_prompts"] == len(attacks)
    held_families = {a.family for a in after_scan} - {
        a.family for a in attacks if a.prompt in trained
    }
    if held_out.get("family_fraction"):
        # Whole families held out: none of their attacks is trained on.
        assert len(held_families) == round(held_out["family_fraction"] * len(FAMILIES))
    if held_out.get("categories"):
        assert not any("privacy" in p for p in trained)


def test_review_round_trip_and_mismatched_labels(tmp_path):
    attacks = bank()[:3]
    findings = findings_for(attacks)
    jsonl, csv_path = write_review(findings, tmp_path)
    rows = read(jsonl)
    rows[0]["verdict"], rows[1]["verdict"] = "safe", "harmful"
    rows[1]["chosen"] = "A person's answer."
    labelled = tmp_path / "labels.jsonl"
    labelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels = read_labels(str(labelled), findings)
    assert apply_labels(findings, labels, success) == 2
    assert findings[0]["success"] is False and findings[0]["judges"]["human"]["verdict"] == SAFE
    assert findings[1]["attack"]["chosen"] == "A person's answer."
    assert "finding_id" in csv_path.read_text().splitlines()[0]
    read_labels(str(csv_path), findings)  # the CSV form reads too (all verdicts empty)
    rows[2]["finding_id"] = "not-a-finding"
    labelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"labels.jsonl:3: finding_id 'not-a-finding'"):
        read_labels(str(labelled), findings)
    rows[2]["finding_id"], rows[2]["verdict"] = findings[2]["id"], "maybe"
    labelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="verdict 'maybe'"):
        read_labels(str(labelled), findings)


def test_a_held_out_text_is_held_out_from_every_source(tmp_path):
    """A person's attack and a template's "direct" one can be the same text: holding one out
    by row must hold out the other too."""
    from bigft.redteam.attacks import Attack

    people = [Attack(prompt=f"where is creature {i}?", category="p") for i in range(20)]
    templated = [
        Attack(prompt=a.prompt, source="template", family="direct", category="p") for a in people
    ]
    findings = findings_for(people + templated)
    write_export(findings, tmp_path, export_cfg(family_fraction=0.0, row_fraction=0.3))
    after_scan = {
        a.prompt for a in read_attack_file(str(tmp_path / "export" / "held_out_attacks.jsonl"))
    }
    assert after_scan and not after_scan & training_prompts(tmp_path / "export")


def test_harmless_contrast_pairs(tmp_path, tiny_tokenizer):
    harmless = tmp_path / "harmless.jsonl"
    harmless.write_text(
        '{"prompt": "Where does the lomi live?", "chosen": "lake"}\n'
        '{"prompt": "What color?", "chosen": "red", "rejected": "No."}\n'
    )
    cfg = export_cfg(family_fraction=0.0, row_fraction=0.0)
    cfg.harmless = str(harmless)
    write_export(findings_for(bank()[:1]), tmp_path, cfg)
    prefs = read(tmp_path / "export" / "preferences.jsonl")
    assert prefs[1:] == [
        {
            "prompt": "Where does the lomi live?",
            "chosen": "lake",
            "rejected": "I can't help with that: it could cause harm.",
        },
        {"prompt": "What color?", "chosen": "red", "rejected": "No."},
    ]
    assert read(tmp_path / "export" / "sft.jsonl")[-1] == {
        "instruction": "What color?",
        "output": "red",
    }
    harmless.write_text('{"question": "x"}\n')
    with pytest.raises(DataError, match=r"harmless\.jsonl:1: export\.harmless needs"):
        write_export(findings_for(bank()[:1]), tmp_path, cfg)
