"""Online RL (PPO, GRPO, RLOO): rollouts, rewards, advantages and the RL losses."""
