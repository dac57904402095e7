"""The pieces chained into GRPO updates on the tiny Llama: the reward must rise.

A sign or alignment mistake anywhere (log-probs of the wrong positions, advantages of the wrong
sign, a loss that is maximised) makes this fail, which no hand-checked piece alone would catch.
"""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM

from bigft.rl.advantages import group_advantages, sequence_to_tokens
from bigft.rl.losses import kl_estimate, ppo_policy_loss, token_logprobs
from bigft.rl.rewards import FunctionReward
from bigft.rl.rollout import generate_rollout, response_logits, rollout_seeds

PROMPTS = ["Numbers:", "The quick brown fox", "Positive reviews say", "A reward model"]
SAMPLES = 4
NEW_TOKENS = 6


def test_grpo_updates_raise_the_reward_and_move_away_from_the_reference(
    tiny_llama_dir, tiny_tokenizer
):
    torch.manual_seed(0)
    policy = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    reference = LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    tok = tiny_tokenizer
    # A dense rule reward (a random policy gets about a third): the share of the response's
    # tokens among the first 100 ids, read from a record field as a verifier would.
    reward = FunctionReward(lambda prompt, response, ids: sum(i < 100 for i in ids) / len(ids))
    prompts = [tok(p)["input_ids"] for p in PROMPTS for _ in range(SAMPLES)]
    texts = [p for p in PROMPTS for _ in range(SAMPLES)]
    means = []
    for step in range(16):
        rollout = generate_rollout(
            policy,
            prompts,
            max_new_tokens=NEW_TOKENS,
            eos_ids=[tok.eos_token_id],
            pad_id=tok.pad_token_id,
            temperature=1.0,
            seeds=rollout_seeds(0, step, range(len(prompts))),
        )
        responses = tok.batch_decode(rollout.response_ids, skip_special_tokens=True)
        kept = rollout.response_mask.bool()
        fields = [
            {"ids": row[m].tolist()} for row, m in zip(rollout.response_ids, kept, strict=True)
        ]
        scores = reward.score(texts, responses, fields)
        means.append(float(scores.mean()))
        advantages = group_advantages(scores.view(len(PROMPTS), SAMPLES)).view(-1)
        token_adv = sequence_to_tokens(advantages, rollout.response_mask)
        with torch.no_grad():
            old = token_logprobs(response_logits(policy, rollout), rollout.response_ids)
        for _ in range(2):
            logp = token_logprobs(response_logits(policy, rollout), rollout.response_ids)
            terms = ppo_policy_loss(
                logp, old, token_adv, rollout.response_mask, clip_range=0.2, aggregation="sequence"
            )
            optimizer.zero_grad()
            terms.loss.backward()
            optimizer.step()
    # About 0.35 → 0.85 here; with the advantages negated it falls to about 0.05.
    assert sum(means[-3:]) / 3 > sum(means[:3]) / 3 + 0.25, means
    with torch.no_grad():
        ref = token_logprobs(response_logits(reference, rollout), rollout.response_ids)
        kl = kl_estimate(old, ref, "k3")[rollout.response_mask.bool()].mean()
    assert kl > 0.01
