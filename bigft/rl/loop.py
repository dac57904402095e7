"""Online RL on the one loop: each step is rollout → score → advantages → clipped updates.

`RLLoop` is the shared `Loop` (checkpoints, stop handling, tracking, the step counter and its
schedule) with the two things that differ for online RL replaced: what one step does, and what
evaluation measures (greedy responses to the held-out prompts, scored by every reward source,
the eval-only ground truth included). A step's prompts are the BatchPlan's examples for this
rank (trainer.micro_batch_size × grad_accum); each gets task.num_generations samples seeded by
(trainer.seed, step, global sample index), so 2 ranks sample what 1 process samples and a
resumed run re-derives them. What is not a weight (the KL controller's β, ppo's reward
normaliser) rides in the checkpoint's JSON state (`LoopState.rl`).

The algorithms differ in two hooks: `advantages` (the rollout's scores → per-token advantages,
bigft/rl/grpo.py's group baselines or bigft/rl/ppo.py's GAE on a value model) and `extra_loss`
(what each micro-batch adds to the clipped policy loss: grpo's KL term, ppo's value loss).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from bigft.distributed.comm import sum_across_ranks
from bigft.engine.batches import eval_batches
from bigft.engine.loop import Loop
from bigft.rl.kl_control import kl_controller
from bigft.rl.losses import kl_estimate, ppo_policy_loss, token_entropy, token_logprobs
from bigft.rl.rewards import (
    RewardScores,
    RewardSum,
    apply_missing_eos_penalty,
    reward_stats,
    summarize_reward_stats,
)
from bigft.rl.rollout import (
    Rollout,
    generate_rollout,
    generation_model,
    response_logits,
    rollout_seeds,
)
from bigft.rl.setup import ReferenceContext, write_samples

SAMPLE_ROWS = 8


def select_rows(rollout: Rollout, rows: torch.Tensor | list[int]) -> Rollout:
    """The rollout of some of its rows (a mini- or micro-batch), cut to their longest response."""
    mask = rollout.response_mask[rows]
    width = max(int(mask.sum(-1).max()), 1) if mask.numel() else 1
    return Rollout(
        rollout.prompt_ids[rows],
        rollout.prompt_mask[rows],
        rollout.response_ids[rows][:, :width],
        mask[:, :width],
        rollout.ended_with_eos[rows],
        rollout.seconds,
    )


@dataclass
class Scored:
    """One step's rollout with everything the updates need, all on this rank."""

    rollout: Rollout
    advantages: torch.Tensor  # [rows, response_len]
    old_logps: torch.Tensor | None  # None: one update only, the policy is its own "old"
    ref_logps: torch.Tensor | None
    stats: dict[str, float]
    # What an algorithm's extra_loss needs besides (ppo: the rollout's values and GAE returns).
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class RLLoop(Loop):
    """The shared RL step; subclasses give `advantages` and `extra_loss` (grpo.py, ppo.py)."""

    rewards: RewardSum | None = None
    reference: ReferenceContext | None = None
    eos_ids: list[int] = field(default_factory=list)
    pad_id: int = 0
    decode: Any = None  # token ids [rows, len] → response texts
    seed: int = 0

    def __post_init__(self) -> None:
        t = self.task.cfg
        self.kl = kl_controller(float(t.kl_coef), t.kl_target, float(t.kl_horizon))
        if self.state.rl:
            self.kl.load_state_dict(self.state.rl["kl"])

    # ---- the algorithm's hooks ------------------------------------------------------------

    def needs_old_logps(self) -> bool:
        """Whether the rollout's log-probs are kept (else the policy is its own "old")."""
        t = self.task.cfg
        return int(t.ppo_epochs) * int(t.mini_batches) > 1

    def advantages(
        self,
        rollout: Rollout,
        scores: torch.Tensor,
        old: torch.Tensor | None,
        ref: torch.Tensor | None,
        stats: dict[str, float],
    ) -> Scored:
        """The rollout's scores [rows] → per-token advantages (and stats, advantage_total...)."""
        raise NotImplementedError

    def extra_loss(
        self,
        logp: torch.Tensor,
        part: Rollout,
        scored: Scored,
        rows: list[int],
        units: float,
        stats: dict[str, float],
    ) -> torch.Tensor | None:
        """A summed term added to a micro-batch's policy loss (None: nothing)."""
        return None

    def algorithm_metrics(self, totals: dict[str, float], updates: int) -> dict[str, float]:
        """A step's metrics of the algorithm's own (from the summed totals of every rank)."""
        return {}

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        """The engine's micro-batch (ppo: and a separate value model's)."""
        return self.engine.micro_batch(last)

    def after_update(self) -> None:
        """After the policy's optimizer step (ppo: a separate value model's step)."""

    def step_schedules(self) -> None:
        self.scheduler.step()

    def rl_state(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the weights."""
        return {"kl": self.kl.state_dict()}

    # ---- rollout and scoring --------------------------------------------------------------

    def rollout(self, prompts: list[list[int]], seeds: list[int] | None, greedy: bool) -> Rollout:
        t = self.task.cfg
        with generation_model(self.engine.forward_model) as gen:
            return generate_rollout(
                gen.module,
                prompts,
                max_new_tokens=int(t.max_new_tokens),
                eos_ids=self.eos_ids,
                pad_id=self.pad_id,
                temperature=0.0 if greedy else float(t.temperature),
                top_p=float(t.top_p),
                seeds=seeds,
                stop_together=gen.stop_together,
            )

    def score(self, examples: list[dict], rollout: Rollout) -> tuple[Any, list[str]]:
        responses = self.decode(rollout.response_ids)
        scores = self.rewards.score(
            [e["prompt"] for e in examples], responses, [e["fields"] for e in examples]
        )
        penalty = self.task.cfg.missing_eos_penalty
        scores.total = apply_missing_eos_penalty(scores.total, rollout.ended_with_eos, penalty)
        return scores, responses

    @torch.no_grad()
    def logps(self, model: torch.nn.Module, rollout: Rollout) -> torch.Tensor:
        with self.autocast():
            return token_logprobs(response_logits(model, rollout), rollout.response_ids)

    def sample(self, step: int) -> Scored:
        t = self.task.cfg
        n = int(t.num_generations)
        ids = [i for micro in self.plan.micro_batches(step, self.env.rank) for i in micro]
        examples = [self.train_examples[i] for i in ids for _ in range(n)]
        seeds = rollout_seeds(self.seed, step, [i * n + j for i in ids for j in range(n)])
        rollout = self.rollout([e["prompt_ids"] for e in examples], seeds, greedy=False)
        scores, _ = self.score(examples, rollout)
        old = self.logps(self.engine.module, rollout) if self.needs_old_logps() else None
        ref = None
        if self.reference is not None:
            with self.reference() as reference:
                ref = self.logps(reference, rollout)
        stats = reward_stats(scores)
        stats.update(
            response_tokens=float(rollout.response_mask.sum()),
            ended=float(rollout.ended_with_eos.sum()),
            gen_tokens=float(rollout.generated_tokens),
            gen_seconds=rollout.seconds,
        )
        return self.advantages(rollout, scores.total, old, ref, stats)

    # ---- updates --------------------------------------------------------------------------

    def micro_units(self, mask: torch.Tensor) -> float:
        if self.task.cfg.loss_aggregation == "token":
            return float(mask.sum())
        return float((mask.sum(-1) > 0).sum())

    def plan_updates(self, rows: int, step: int) -> list[list[list[int]]]:
        """Per update: its micro-batches of rollout rows (grad_accum of them, as DeepSpeed
        expects one boundary per grad_accum backwards). Shuffled per epoch, seeded by step."""
        t = self.task.cfg
        updates = []
        for epoch in range(int(t.ppo_epochs)):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 101 + epoch)
            order = torch.randperm(rows, generator=g).tolist() if epoch else list(range(rows))
            size = rows // int(t.mini_batches)
            for m in range(int(t.mini_batches)):
                mini = order[m * size : (m + 1) * size]
                k = self.trainer.grad_accum
                micro = -(-len(mini) // k)
                updates.append([mini[i * micro : (i + 1) * micro] for i in range(k)])
        return updates

    def update(self, scored: Scored, micros: list[list[int]], first: bool) -> dict[str, float]:
        """One optimizer update over `micros`; summed statistics of this rank."""
        t = self.task.cfg
        local = [self.micro_units(scored.rollout.response_mask[m]) for m in micros]
        units = sum_across_ranks({"units": sum(local)})["units"]
        stats: dict[str, float] = {}
        model = self.engine.forward_model
        for i, rows in enumerate(micros):
            part = select_rows(scored.rollout, rows)
            width = part.response_ids.shape[1]
            adv = scored.advantages[rows][:, :width]
            with self.micro_batch(last=i == len(micros) - 1), self.autocast():
                logits = response_logits(model, part)
                logp = token_logprobs(logits, part.response_ids)
                old = logp if scored.old_logps is None else scored.old_logps[rows][:, :width]
                how = str(t.loss_aggregation)
                terms = ppo_policy_loss(
                    logp,
                    old,
                    adv,
                    part.response_mask,
                    clip_range=float(t.clip_range),
                    aggregation=how,
                )
                loss_sum = terms.loss_sum
                extra = self.extra_loss(logp, part, scored, rows, units, stats)
                if extra is not None:
                    loss_sum = loss_sum + extra
                if first:
                    add_stats(stats, _first_pass_stats(logits, logp, scored, rows, part))
                self.engine.backward(loss_sum / max(units, 1.0))
            add_stats(stats, {**terms.stats, "loss": float(loss_sum.detach()) / max(units, 1.0)})
        applied, grad_norm = self.engine.step()
        stats.update(applied=float(applied), grad_norm=grad_norm)
        self.after_update()
        return stats

    # ---- one step -------------------------------------------------------------------------

    def train_step(self, step: int) -> dict[str, float]:
        started = time.perf_counter()
        scored = self.sample(step)
        self.engine.forward_model.train()
        train_started = time.perf_counter()
        rows = scored.rollout.response_ids.shape[0]
        totals: dict[str, float] = dict(scored.stats)
        norms, applied = [], 0.0
        for k, micros in enumerate(self.plan_updates(rows, step)):
            stats = self.update(scored, micros, first=k < int(self.task.cfg.mini_batches))
            norms.append(stats.pop("grad_norm"))
            applied += stats.pop("applied")
            add_stats(totals, stats)
        train_seconds = time.perf_counter() - train_started
        seconds = {"gen_seconds": totals.pop("gen_seconds"), "train_seconds": train_seconds}
        totals = self.sum_step_stats(dict(sorted(totals.items())))
        finite = applied == len(norms) and all(map(math.isfinite, norms))
        if finite:
            self.step_schedules()
        self.record_step_health(finite, step)
        metrics = self.step_metrics(totals, seconds, len(norms))
        metrics["train/grad_norm"] = norms[-1]
        metrics["train/step_seconds"] = time.perf_counter() - started
        self.kl.update(metrics.get("train/kl", 0.0), int(totals["samples"]))
        self.state.rl = self.rl_state()
        self.state.tokens_seen += int(totals["response_tokens"])
        return metrics

    def step_metrics(
        self, totals: dict[str, float], seconds: dict[str, float], updates: int
    ) -> dict[str, float]:
        n = max(totals["samples"], 1.0)
        tokens = max(totals.get("tokens", 0.0), 1.0)
        # Per response (grpo) or per response token (ppo: advantage_count).
        adv_n = max(totals.get("advantage_count", totals["samples"]), 1.0)
        adv_mean = totals["advantage_total"] / adv_n
        metrics = {f"train/{k}": v for k, v in summarize_reward_stats(totals).items()}
        metrics.update(
            {
                "train/loss": totals["loss"] / updates,
                "train/lr": self.scheduler.get_last_lr()[0],
                "train/kl_coef": self.kl.value,
                "train/advantage_mean": adv_mean,
                "train/advantage_std": max(totals["advantage_sq_total"] / adv_n - adv_mean**2, 0.0)
                ** 0.5,
                "train/response_length": totals["response_tokens"] / n,
                "train/eos_fraction": totals["ended"] / n,
                "train/clip_fraction": totals.get("clipped", 0.0) / tokens,
                "train/approx_kl": totals.get("approx_kl_sum", 0.0) / tokens,
                "train/entropy": totals.get("entropy_sum", 0.0) / max(totals["response_tokens"], 1),
                # Per rank: generation and training share the same devices in turn.
                "train/gen_tokens_per_sec": totals["gen_tokens"]
                / self.env.world_size
                / max(seconds["gen_seconds"], 1e-9),
                "train/tokens_per_sec": totals["response_tokens"]
                * int(self.task.cfg.ppo_epochs)
                / self.env.world_size
                / max(seconds["train_seconds"], 1e-9),
                "train/tokens_seen": float(self.state.tokens_seen + totals["response_tokens"]),
            }
        )
        if "kl_tok_sum" in totals:
            metrics["train/kl"] = totals["kl_tok_sum"] / n
        metrics.update(self.algorithm_metrics(totals, updates))
        return metrics

    # ---- evaluation -----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy responses to the held-out prompts, scored by every reward source."""
        if not self.eval_examples:
            return {}
        stats: dict[str, float] = {}
        rows: list[dict[str, Any]] = []
        shares = eval_batches(
            len(self.eval_examples),
            self.trainer.eval_batch_size,
            self.env.rank,
            self.env.world_size,
        )
        for indices, counted in shares:
            examples = [self.eval_examples[i] for i in indices]
            # An uncounted batch (this rank's turn had none left) is rolled out and scored too,
            # counting 0, as Loop.evaluate does: every rank makes the same rollouts (collectives
            # under ZeRO-3) and holds the same keys for the sum across ranks.
            rollout = self.rollout([e["prompt_ids"] for e in examples], None, greedy=True)
            scores, responses = self.score(examples, rollout)
            batch = reward_stats(scores)
            batch["response_tokens"] = float(rollout.response_mask.sum())
            batch["ended"] = float(rollout.ended_with_eos.sum())
            add_stats(stats, {k: v if counted else 0.0 for k, v in batch.items()})
            if counted:
                rows += _sample_rows(examples, responses, scores)[: SAMPLE_ROWS - len(rows)]
        self.engine.forward_model.train()
        stats = sum_across_ranks(dict(sorted(stats.items())))
        n = max(stats["samples"], 1.0)
        metrics = {f"eval/{k}": v for k, v in summarize_reward_stats(stats).items()}
        metrics["eval/response_length"] = stats["response_tokens"] / n
        metrics["eval/eos_fraction"] = stats["ended"] / n
        if self.env.is_main and rows:
            write_samples(self.run_dir, self.state.step, rows)
            self.tracker.table("samples", rows, step=self.state.step)
        return metrics


def _sample_rows(
    examples: list[dict], responses: list[str], scores: RewardScores
) -> list[dict[str, Any]]:
    """One row per response for samples.jsonl and the W&B table: its reward, every source's."""
    return [
        {
            "prompt": e["prompt"],
            "response": text,
            "reward": float(scores.total[j]),
            **{k: float(v[j]) for k, v in scores.per_source.items()},
        }
        for j, (e, text) in enumerate(zip(examples, responses, strict=True))
    ]


def _first_pass_stats(
    logits: torch.Tensor, logp: torch.Tensor, scored: Scored, rows: list[int], part: Rollout
) -> dict[str, float]:
    """Entropy and KL to the reference, measured on the first pass over the rollout."""
    mask = part.response_mask.to(torch.float32)
    with torch.no_grad():
        ent = token_entropy(logits.detach(), part.response_mask)
        out = {"entropy_sum": float((ent * mask).sum())}
        if scored.ref_logps is not None:
            ref = scored.ref_logps[rows][:, : logp.shape[1]]
            out["kl_tok_sum"] = float((kl_estimate(logp.detach(), ref, "k3") * mask).sum())
    return out


def add_stats(into: dict[str, float], values: dict[str, float]) -> None:
    for key, value in values.items():
        into[key] = into.get(key, 0.0) + float(value)
