"""TRL's side of benchmarks/rl.py: GRPOTrainer on the model, prompts and settings it prepared.

Runs in TRL's own venv (.venv-bench-rl, `make bench-rl` builds it), never in bigft's: it imports
torch, transformers and trl, and from bigft only `bigft.demo.truth` (standard library only), so
that both frameworks are rewarded by the same function. benchmarks/rl.py starts it as

    .venv-bench-rl/bin/python benchmarks/rl_trl.py SETUP.json OUT.json

SETUP.json holds the shared settings (benchmarks/rl.py `setup()`); OUT.json gets, per step,
the step's time (on_step_begin to on_step_end: rollout, scoring, reference pass, forward,
backward and the optimizer step, as bigft's train/step_seconds), the time from the previous
step's end, and the generation's time and tokens, timed around the policy's `generate` call
(prefill included, as bigft's rollout is timed), tokens counted up to and including each
completion's first EOS (bigft's response_mask).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def truth_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    from bigft.demo.truth import score

    return [score(p, c) for p, c in zip(prompts, completions, strict=True)]


class GenerationClock:
    """Wraps a model's `generate`: its wall-clock time and the completion tokens it made."""

    def __init__(self, model: Any, eos_ids: list[int]) -> None:
        self.seconds = 0.0
        self.tokens = 0
        self._generate = model.generate
        self._eos = eos_ids
        model.generate = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch

        started = time.perf_counter()
        out = self._generate(*args, **kwargs)
        self.seconds += time.perf_counter() - started
        completion = out[:, kwargs["input_ids"].shape[1] :]
        is_eos = torch.isin(completion, torch.tensor(self._eos))
        before = is_eos.long().cumsum(-1) - is_eos.long()
        self.tokens += int((before == 0).sum())
        return out


def grpo_config(setup: dict[str, Any], output_dir: Path) -> Any:
    import torch
    from trl import GRPOConfig

    rows = setup["prompts_per_step"] * setup["num_generations"]
    return GRPOConfig(
        output_dir=str(output_dir),
        # TRL counts completions per device; one generation batch per optimizer step, one update
        # per generation (no old log-probs), as bigft with ppo_epochs = mini_batches = 1.
        per_device_train_batch_size=rows,
        gradient_accumulation_steps=1,
        num_generations=setup["num_generations"],
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=setup["max_new_tokens"],
        temperature=setup["temperature"],
        top_p=1.0,
        top_k=0,
        use_vllm=False,
        beta=setup["kl_coef"],
        epsilon=setup["clip_range"],
        # "grpo": each completion's tokens averaged, then completions: bigft's
        # loss_aggregation=sequence; rewards scaled by their group's std as scale_rewards=true.
        loss_type="grpo",
        scale_rewards="group",
        learning_rate=setup["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=setup["steps"],
        seed=setup["seed"],
        # TRL's defaults differ from the plain Trainer's here; bigft runs fp32 without
        # checkpointing, so TRL does too.
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def main(setup_file: Path, out_file: Path) -> None:
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    setup = json.loads(setup_file.read_text())
    begins: list[float] = []
    ends: list[float] = []
    gen: list[tuple[float, int]] = []
    logs: list[dict[str, float]] = []
    clock: GenerationClock | None = None

    class Steps(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            begins.append(time.perf_counter())
            clock.seconds, clock.tokens = 0.0, 0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            ends.append(time.perf_counter())
            gen.append((clock.seconds, clock.tokens))

        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            logged = kwargs.get("logs") or {}
            logs.append({k: v for k, v in logged.items() if isinstance(v, (int, float))})

    dataset = load_dataset("json", data_files=setup["trl_prompts"], split="train")
    trainer = GRPOTrainer(
        model=setup["model"],
        reward_funcs=truth_reward,
        args=grpo_config(setup, Path(setup["work"]) / "trl-output"),
        train_dataset=dataset,
        callbacks=[Steps()],
    )
    clock = GenerationClock(trainer.model, list(trainer.eos_token_ids))
    trainer.train()
    steps = [
        {
            "step_seconds": end - begin,
            "gen_seconds": g[0],
            "gen_tokens": g[1],
        }
        for begin, end, g in zip(begins, ends, gen, strict=True)
    ]
    for i in range(1, len(steps)):
        steps[i]["end_to_end_seconds"] = ends[i] - ends[i - 1]
    out_file.write_text(json.dumps({"steps": steps, "logs": logs}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
