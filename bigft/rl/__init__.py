"""Online RL against a reward (PPO, GRPO, RLOO): the pieces task=ppo and task=grpo stand on.

The data flow of one RL step (DESIGN.md's `rl` line), and the module doing each arrow:

    prompts ──► rollout ──► score ──► advantages ──► clipped update (ppo_epochs × mini-batches)

- `rollout.py`: the policy samples responses with the KV cache from left-padded prompts, in
  eval mode, stopping at EOS (`generate_rollout` → `Rollout`: prompt and response ids, the
  response mask up to and including EOS, which rows ended, tokens/s). Sampling is reproducible
  from per-row seeds (`rollout_seeds(seed, step, global index)`: the same on 1 or N ranks, and
  after a resume) or a checkpointed `torch.Generator`. `generation_model` hands out the module
  to generate with: under ZeRO-3 the whole model gathered once per rollout phase (or sharded,
  with ranks decoding in step). `rollout_inputs` / `response_logits` / `response_values` give
  the training forward over prompt + response and what it says about each response token.
- `rewards.py` / `reward_model.py`: reward sources, `reward.fn=<module>:<function>`
  (`FunctionReward`) and `reward.model=<run dir>` (`RewardModelScorer`, scoring in task=reward's
  exact format), their weighted sum (`RewardSum`, eval-only sources for a ground-truth check),
  the missing-EOS penalty, and summable per-source reward metrics.
- `losses.py`: float32 token log-probs without a float32 copy of the logits, entropy, the KL
  estimators k1/k2/k3, PPO's clipped policy loss and clipped value loss, GRPO's KL loss term;
  all returned summed with their units (tokens or sequences), like every bigft task's loss.
- `advantages.py`: GAE over per-token rewards (`ppo_token_rewards`: −β·KL per token, the score
  on the last one), masked whitening from summable statistics (identical on every rank), GRPO's
  group-normalised advantages (with or without the std, Dr. GRPO) and RLOO's leave-one-out.
- `kl_control.py`: fixed or adaptive β (Ziegler et al.) and the running reward normaliser,
  with JSON state for checkpoints.
- `loop.py`: `RLLoop`, one RL step on the shared `Loop` (rollout → score → reference
  log-probs → advantages → ppo_epochs × mini_batches clipped updates) and greedy evaluation;
  `grpo.py` (`GRPOLoop`) and `ppo.py` (`PPOLoop`) give its `advantages` and `extra_loss` hooks.
- `value.py` / `value_model.py`: ppo's value model behind one interface (`Values`, built by
  `build_values`): a second LoRA adapter and head on the policy's base under lora/qlora, a
  model of its own with its optimizer and checkpoint files under full/freeze.
- `setup.py`: the reward sources from `reward:`, the reference, samples.jsonl.

How the tasks put them together, per rollout batch:

    ppo:  rollout → old log-probs (policy), reference log-probs (adapters disabled or a frozen
          copy), values (a per-token value model) at the response positions →
          scores = RewardSum(...) − missing-EOS penalty, optionally normalised (RunningMoments)
          → kl = kl_estimate(old, ref, "k1") → ppo_token_rewards(scores, kl, mask, β) →
          gae(...) → whiten(advantages) → for each epoch and mini-batch: ppo_policy_loss +
          vf_coef · value_loss → β = controller.update(mean KL, batch size).
    grpo: N rollouts per prompt (seeds by global sample index) → scores [prompts, N] →
          group_advantages (or rloo_advantages with task.advantage=rloo) →
          sequence_to_tokens → ppo_policy_loss (+ kl_loss when task.kl_in=loss; with
          kl_in=reward, kl_penalised_scores before the group normalisation instead).
"""
