"""task=ppo's data: prompts, encoded exactly as task=grpo encodes them (chat template or
task.prompt_template); the per-step work is bigft/rl/ppo.py's, on the shared RLLoop."""

from __future__ import annotations

from bigft.tasks.grpo import GRPOTask


class PPOTask(GRPOTask):
    name = "ppo"
