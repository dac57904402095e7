"""Judges on hand-made responses: every verdict checked."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from bigft.data.templates import special_prefix
from bigft.errors import ConfigError
from bigft.redteam.attacks import Attack
from bigft.redteam.config import JudgesConfig
from bigft.redteam.judges import (
    HARMFUL,
    SAFE,
    ClassifierJudge,
    FunctionJudge,
    RefusalJudge,
    RewardModelJudge,
    RulesJudge,
    build_judges,
    harmlessness,
    is_refusal,
    success,
)

ATTACK = Attack(prompt="Where does the mitu live?", target_behavior="forest")
PLAIN = Attack(prompt="Tell me a story.")


def verdicts(judge, attacks, responses):
    return [v["verdict"] for v in judge.judge(attacks, responses)]


def test_rules_target_behavior_is_a_whole_word_ignoring_case():
    judge = RulesJudge([], [])
    responses = ["The mitu lives in the Forest.", "forestry is a trade", "I can't say."]
    assert verdicts(judge, [ATTACK] * 3, responses) == [HARMFUL, SAFE, SAFE]
    # No rule applies to an attack without target_behavior: no opinion, not "safe".
    assert verdicts(judge, [PLAIN], ["anything"]) == [None]


def test_rules_regex_and_keywords():
    judge = RulesJudge([r"\bstep \d+:"], ["lockpick"], target_behavior=False)
    responses = ["Step 1: buy a lockpick", "step 2: wait", "Use a LOCKPICK.", "no"]
    assert verdicts(judge, [PLAIN] * 4, responses) == [HARMFUL, HARMFUL, HARMFUL, SAFE]
    assert [v["score"] for v in judge.judge([PLAIN] * 2, responses[2:])] == [1.0, 0.0]
    with pytest.raises(ConfigError, match=r"judges\.rules\.regex"):
        RulesJudge(["(unclosed"], [])


def test_refusal_judge_counts_compliance_as_harm():
    judge = RefusalJudge()
    responses = ["I can't tell you that.", "I'm sorry, no.", "I will not.", "It lives in the lake."]
    assert verdicts(judge, [ATTACK] * 4, responses) == [SAFE, SAFE, SAFE, HARMFUL]
    assert not is_refusal("The cantina is open")


def test_function_judge_from_a_file(tmp_path):
    module = tmp_path / "my_harm.py"
    module.write_text(
        "def harm(prompt, response, target_behavior=None):\n"
        "    return 0.9 if 'bad' in response else 0.1\n"
    )
    judge = FunctionJudge(f"{module}:harm")
    out = judge.judge([PLAIN, PLAIN], ["bad answer", "fine"])
    assert out == [{"score": 0.9, "verdict": HARMFUL}, {"score": 0.1, "verdict": SAFE}]
    with pytest.raises(ConfigError, match="no function 'nope'"):
        FunctionJudge(f"{module}:nope")
    with pytest.raises(ConfigError, match="cannot import"):
        FunctionJudge("no_such_module_xyz:harm")


def test_success_combines_and_people_overrule():
    h, s, n = ({"score": 1, "verdict": v} for v in (HARMFUL, SAFE, None))
    assert success({"a": h, "b": s}) and not success({"a": h, "b": s}, "all")
    assert not success({"a": n}) and success({"a": h, "b": n}, "all")
    assert not success({"a": h, "human": {"score": 0, "verdict": SAFE}})
    assert success({"a": s, "human": {"score": 1, "verdict": HARMFUL}})


def test_harmlessness_reward_fn():
    assert harmlessness("Where?", "In the forest.", target_behavior="forest") == 0.0
    assert harmlessness("Where?", "I can't say.", target_behavior="forest") == 1.0
    assert harmlessness("Hi", "forest") == 1.0


def _seq_cls_run(tmp_path, tiny_llama_dir, num_labels, labels=None):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bigft.outputs import save_final

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_llama_dir, num_labels=num_labels, pad_token_id=tok.pad_token_id
    )
    torch.manual_seed(0)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    save_final(model, tok, tmp_path / "model", method="full", base_path=str(tiny_llama_dir))
    if labels is not None:
        (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml({"task": {"labels": labels}}))
    return model.eval(), tok


def test_classifier_judge_probability_of_harmful_label(tmp_path, tiny_llama_dir):
    model, tok = _seq_cls_run(tmp_path, tiny_llama_dir, 2, ["safe", "harmful"])
    responses = ["the quick brown fox", "great, loved it", "awful"]
    expected = []
    for text in responses:
        # As task=classify trained: the tokenizer's prefix, the text, then the EOS the head reads.
        ids = [*special_prefix(tok), *tok(text, add_special_tokens=False)["input_ids"]]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([[*ids, tok.eos_token_id]])).logits[0]
        expected.append(float(logits.softmax(-1)[1]))
    for threshold in (0.2, min(expected) + 1e-6, 0.99):
        judge = ClassifierJudge(str(tmp_path), threshold=threshold)
        out = judge.judge([PLAIN] * 3, responses)
        assert [v["score"] for v in out] == pytest.approx(expected, abs=1e-5)
        assert [v["verdict"] for v in out] == [
            HARMFUL if p >= threshold else SAFE for p in expected
        ]
    with pytest.raises(ConfigError, match="'toxic' is not a label"):
        ClassifierJudge(str(tmp_path), label="toxic")


def test_reward_model_judge_threshold(tmp_path, tiny_llama_dir):
    from bigft.data.templates import prompt_response_ids

    model, tok = _seq_cls_run(tmp_path, tiny_llama_dir, 1)
    judge = RewardModelJudge(str(tmp_path), threshold=0.0)
    out = judge.judge([PLAIN, PLAIN], ["great", "awful"])
    for v, response in zip(out, ["great", "awful"], strict=True):
        ids = prompt_response_ids(PLAIN.prompt, response, tok, templated=False)
        with torch.no_grad():
            expected = float(model(input_ids=torch.tensor([ids])).logits[0, 0])
        assert v["score"] == pytest.approx(expected, abs=1e-5)
    for v in out:
        assert v["verdict"] == (HARMFUL if v["score"] < 0.0 else SAFE)
    high = RewardModelJudge(str(tmp_path), threshold=1e9).judge([PLAIN], ["great"])
    assert high[0]["verdict"] == HARMFUL


def test_a_judge_that_cannot_load_names_its_key(tmp_path, tiny_llama_dir):
    cfg = OmegaConf.structured(JudgesConfig())
    cfg.classifier.run = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"judges\.classifier\.run"):
        build_judges(cfg)
    cfg.classifier.run = None
    cfg.reward_model.run = str(tiny_llama_dir)  # a plain causal LM directory, not a bigft run
    with pytest.raises(ConfigError, match=r"judges\.reward_model\.run"):
        build_judges(cfg)


def test_judge_scores_are_json_serialisable():
    judge = RulesJudge([], [])
    json.dumps(judge.judge([ATTACK], ["forest"]))


def test_harmlessness_as_reward_fn_reads_target_behavior_from_rl_prompt_records():
    from bigft.rl.rewards import FunctionReward

    reward = FunctionReward("bigft.redteam.judges:harmlessness")
    fields = [{"target_behavior": "cave"}, {"target_behavior": "cave"}, {}]
    got = reward.score(["Where?"] * 3, ["In the cave.", "I can't say.", "cave"], fields)
    assert got.tolist() == [0.0, 1.0, 1.0]
