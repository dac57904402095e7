"""RewardModelScorer on a tiny Llama reward model: full, bigft run, peft adapter, mistakes."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

from bigft.data.templates import prompt_response_ids
from bigft.errors import ConfigError
from bigft.outputs import save_final
from bigft.rl.reward_model import RewardModelScorer

PROMPTS = ["Reverse the word cat.", "Say something positive.", "Count to three."]
RESPONSES = ["tac", "great, loved it", "1 2 3 4 5 6 7 8 9 10 11 12"]


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, tiny_llama_dir):
    config = AutoConfig.from_pretrained(tiny_llama_dir, num_labels=1)
    torch.manual_seed(1)
    model = LlamaForSequenceClassification(config)
    out = tmp_path_factory.mktemp("reward_model")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(out)
    return out


def one_by_one(model, tokenizer, max_length=512):
    """Each sample alone, unpadded, in task=reward's format: the reference scores."""
    scores = []
    with torch.no_grad():
        for prompt, response in zip(PROMPTS, RESPONSES, strict=True):
            ids = prompt_response_ids(prompt, response, tokenizer, templated=False)
            ids = [*ids[: max_length - 1], ids[-1]] if len(ids) > max_length else ids
            scores.append(model(input_ids=torch.tensor([ids])).logits[0, 0])
    return torch.stack(scores)


def test_batched_scores_equal_each_sample_scored_alone(reward_dir):
    scorer = RewardModelScorer(reward_dir, batch_size=2, device="cpu")
    model = LlamaForSequenceClassification.from_pretrained(reward_dir).eval()
    expected = one_by_one(model, scorer.tokenizer)
    scores = scorer.score(PROMPTS, RESPONSES)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    assert scores.std() > 0  # a real model, not a constant


def test_scoring_format_is_task_rewards_ending_in_eos_even_when_cut(reward_dir):
    scorer = RewardModelScorer(reward_dir, max_length=6)
    ids = scorer.encode(PROMPTS[2], RESPONSES[2])
    full = prompt_response_ids(PROMPTS[2], RESPONSES[2], scorer.tokenizer, templated=False)
    assert len(full) > 6 and ids == [*full[:5], scorer.tokenizer.eos_token_id]
    model = LlamaForSequenceClassification.from_pretrained(reward_dir).eval()
    torch.testing.assert_close(
        scorer.score(PROMPTS, RESPONSES), one_by_one(model, scorer.tokenizer, 6), atol=1e-5, rtol=0
    )


def test_a_bigft_reward_run_dir_scores_the_same(reward_dir, tmp_path):
    model = LlamaForSequenceClassification.from_pretrained(reward_dir)
    tokenizer = AutoTokenizer.from_pretrained(reward_dir)
    save_final(
        model, tokenizer, tmp_path / "run" / "model", method="full", base_path=str(reward_dir)
    )
    from_run = RewardModelScorer(tmp_path / "run").score(PROMPTS, RESPONSES)
    torch.testing.assert_close(from_run, RewardModelScorer(reward_dir).score(PROMPTS, RESPONSES))


def test_adapters_are_scored_on_their_base(reward_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = LlamaForSequenceClassification.from_pretrained(reward_dir)
    lora = LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(base, lora)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a trained-looking adapter that changes the scores
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(reward_dir)
    expected = one_by_one(model, tokenizer)
    model.save_pretrained(tmp_path / "adapter")  # plain peft: adapter_config.json names the base
    save_final(
        model, tokenizer, tmp_path / "run" / "model", method="lora", base_path=str(reward_dir)
    )
    plain = RewardModelScorer(tmp_path / "adapter", device="cpu").score(PROMPTS, RESPONSES)
    from_run = RewardModelScorer(tmp_path / "run").score(PROMPTS, RESPONSES)
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(from_run, expected, atol=1e-5, rtol=1e-5)
    base_scores = RewardModelScorer(reward_dir).score(PROMPTS, RESPONSES)
    assert (plain - base_scores).abs().max() > 1e-3


def test_a_causal_lm_is_refused_rather_than_given_a_random_head(tiny_llama_dir):
    with pytest.raises(ConfigError, match=r"LlamaForCausalLM model, not a reward model"):
        RewardModelScorer(tiny_llama_dir)


def test_paths_that_are_not_models_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"reward.model='.*nowhere' does not exist"):
        RewardModelScorer(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"neither a bigft run .* nor a model directory"):
        RewardModelScorer(tmp_path)


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def test_a_chat_template_is_used_exactly_as_task_reward_uses_it(reward_dir, tmp_path):
    templated_dir = tmp_path / "templated"
    shutil.copytree(reward_dir, templated_dir)
    tokenizer = AutoTokenizer.from_pretrained(reward_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(templated_dir)
    scorer = RewardModelScorer(templated_dir)
    expected = prompt_response_ids("hi", "tac", scorer.tokenizer, templated=True)
    assert scorer.encode("hi", "tac") == expected
    plain = prompt_response_ids("hi", "tac", scorer.tokenizer, templated=False)
    assert expected != plain
    assert RewardModelScorer(templated_dir, use_chat_template=False).encode("hi", "tac") == plain
