"""Preference optimisation (DPO, IPO, SimPO) on chosen/rejected pairs of responses.

A pair is two sequences, prompt + response, whose response tokens' log-probabilities are summed
(the prompt is masked). One forward over 2P rows scores a micro-batch of P pairs: rows [0, P)
are the chosen responses, rows [P, 2P) the rejected ones. The reference log-probabilities come
either with the batch (precomputed once before training, see `bigft.tasks.reference`) or from
the policy itself with its adapters disabled, under no_grad: no second copy of the weights.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from bigft.data.collate import IGNORE_INDEX, attention_mask, collate_sequences, pad_left, pad_right
from bigft.data.preferences import preference_rankings, read_judged
from bigft.data.readers import Record
from bigft.data.templates import (
    ROLES,
    Segment,
    instruction_segments,
    plain_chat_segments,
    template_segments,
    text_field,
    uses_chat_template,
)
from bigft.errors import ConfigError, DataError
from bigft.models.decode import greedy_answers
from bigft.tasks.base import LossOutput, ModelHead, forward_logits, loss_stats, pad_token_id
from bigft.tasks.preference_losses import (
    ipo_loss,
    sft_loss,
    sigmoid_loss,
    simpo_loss,
    simpo_rewards,
)
from bigft.tasks.truth_eval import TruthEval, summarize_truth

# The batch key of precomputed reference log-probabilities: [chosen rows..., rejected rows...].
REFERENCE_KEY = "reference_logps"


class DPOTask:
    name = "dpo"
    model_head: ModelHead = "causal_lm"
    num_labels: int | None = None

    def __init__(self, cfg: Any, tokenizer: Any) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.max_length: int = cfg.max_length
        self.pad_id = pad_token_id(tokenizer)
        self.templated = uses_chat_template(tokenizer, cfg.use_chat_template)
        self.aggregate = str(cfg.aggregate)
        self.loss_name = str(cfg.loss)
        self.beta = float(cfg.beta)
        self.sft_weight = float(cfg.sft_weight)
        # SimPO is reference-free: no reference pass, no disabled-adapter forward.
        self.needs_reference = self.loss_name != "simpo"
        self.generates_in_eval: bool = bool(cfg.eval_generate)
        self.truth = _truth_eval(cfg)

    # ---- records → examples → batches ------------------------------------------------------

    def encode(self, record: Record) -> list[dict]:
        prompt = _prompt(record)
        judged = read_judged(record)
        # As task=reward reads rankings: task.aggregate's consensus (or every reviewer's pairs),
        # and responses the reviewers tie make no pair.
        pairs = [p for ranking in preference_rankings(judged, self.aggregate) for p in ranking]
        if not pairs:
            return []
        seqs = [self._sequence(prompt, r, record) for r in judged.responses]
        overlong = any(len(ids) > self.max_length for ids, _ in seqs)
        if overlong and self.cfg.overlong == "drop":
            return []  # dropping some responses only would change the ranking's pairs
        seqs = [self._cut(ids, start, record) for ids, start in seqs]
        examples = [
            {
                "chosen_ids": seqs[i][0],
                "chosen_start": seqs[i][1],
                "rejected_ids": seqs[j][0],
                "rejected_start": seqs[j][1],
            }
            for i, j in pairs
        ]
        if overlong:
            examples[0]["truncated"] = True
        if self.generates_in_eval and examples:
            # One answer per prompt, not per pair: the record's first pair carries the prompt.
            examples[0]["prompt_ids"] = seqs[0][0][: seqs[0][1]]
        return examples

    def _sequence(
        self, prompt: str | list[dict[str, str]], response: str, record: Record
    ) -> tuple[list[int], int]:
        """(token ids, index of the first response token) of prompt + response."""
        if isinstance(prompt, str) and not self.templated:
            # As task=sft formats an instruction, so that dpo continues an sft model's format.
            try:
                text = self.cfg.prompt_template.format_map({**record.fields, "instruction": prompt})
            except KeyError as err:
                raise DataError(f"{record.source}: the prompt template needs field {err}") from None
            return _last_response(instruction_segments(text, response, self.tokenizer, "dpo"))
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        messages = [*messages, {"role": "assistant", "content": response}]
        if self.templated:
            segments = template_segments(messages, self.tokenizer, record.source)
        else:
            segments = plain_chat_segments(messages, self.tokenizer)
        return _last_response(segments)

    def _cut(self, ids: list[int], start: int, record: Record) -> tuple[list[int], int]:
        # Cut from the right: the prompt's start is what the response depends on.
        if len(ids) <= self.max_length:
            return ids, start
        if start >= self.max_length:
            raise DataError(
                f"{record.source}: the prompt is {start} tokens, so no response token fits in "
                f"task.max_length={self.max_length}; raise task.max_length or set "
                "task.overlong=drop"
            )
        return ids[: self.max_length], start

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        rows = [(ex["chosen_ids"], ex["chosen_start"]) for ex in examples]
        rows += [(ex["rejected_ids"], ex["rejected_start"]) for ex in examples]
        batch = collate_sequences([ids for ids, _ in rows], self.pad_id)
        labels = [[IGNORE_INDEX] * start + ids[start:] for ids, start in rows]
        batch["labels"] = pad_right(labels, IGNORE_INDEX)
        batch["num_units"] = torch.tensor(len(examples), dtype=torch.long)
        if examples and all(REFERENCE_KEY in ex for ex in examples):
            chosen = [ex[REFERENCE_KEY][0] for ex in examples]
            rejected = [ex[REFERENCE_KEY][1] for ex in examples]
            batch[REFERENCE_KEY] = torch.tensor(chosen + rejected, dtype=torch.float32)
        prompts = [ex["prompt_ids"] for ex in examples if "prompt_ids" in ex]
        if self.generates_in_eval and prompts:
            batch["gen_prompt_ids"] = pad_left(prompts, self.pad_id)
            batch["gen_prompt_mask"] = attention_mask(prompts, left=True)
        return batch

    # ---- batch → loss ------------------------------------------------------------------------

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        loss_sum, stats = self._loss_and_stats(model, batch)
        return LossOutput(loss_sum, stats)

    def eval_stats(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        with torch.no_grad():
            stats = self._loss_and_stats(model, batch)[1]
            if "gen_prompt_ids" in batch:
                stats |= self._truth_stats(model, batch)
        return stats

    def _truth_stats(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict:
        rows = [
            ids[mask.bool()]
            for ids, mask in zip(batch["gen_prompt_ids"], batch["gen_prompt_mask"], strict=True)
        ]
        answers = greedy_answers(
            model, self.tokenizer, rows, max_new_tokens=self.cfg.max_new_tokens, pad_id=self.pad_id
        )
        prompts = [self.tokenizer.decode(ids.tolist(), skip_special_tokens=True) for ids in rows]
        return self.truth.stats(prompts, answers)

    def _loss_and_stats(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        reference = self._reference(model, batch) if self.needs_reference else None
        policy, tokens = sequence_logps(model, batch)
        pairs = policy.shape[0] // 2
        losses, chosen_reward, rejected_reward = self._pair_losses(policy, reference, tokens, pairs)
        nll = sft_loss(policy[:pairs], tokens[:pairs].to(policy.dtype))
        if self.sft_weight:
            losses = losses + self.sft_weight * nll
        loss_sum = losses.sum()
        margin = (chosen_reward - rejected_reward).detach()
        stats = loss_stats(loss_sum, batch) | {
            "correct": float((margin > 0).sum()),
            "reward_chosen_sum": float(chosen_reward.detach().sum()),
            "reward_rejected_sum": float(rejected_reward.detach().sum()),
            "logp_chosen_sum": float(policy[:pairs].detach().sum()),
            "logp_rejected_sum": float(policy[pairs:].detach().sum()),
            "nll_chosen_sum": float(nll.detach().sum()),
        }
        return loss_sum, stats

    def _reference(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if REFERENCE_KEY in batch:
            return batch[REFERENCE_KEY]
        peft_model = peft_model_of(model)
        if peft_model is None:
            raise ConfigError(
                "task=dpo has no reference log-probabilities for this batch: a model without "
                "adapters needs them precomputed (task.reference=precompute)"
            )
        # The policy with its adapters switched off is the initial model: the reference, at
        # the cost of one forward without gradients and no second copy of the weights. Under
        # ZeRO-3 this forward gathers the shards like any other (every rank runs it).
        with torch.no_grad(), peft_model.disable_adapter():
            return sequence_logps(peft_model, batch)[0]

    def _pair_losses(
        self,
        policy: torch.Tensor,
        reference: torch.Tensor | None,
        tokens: torch.Tensor,
        pairs: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-pair losses and the implicit rewards of the chosen and rejected responses."""
        pc, pr = policy[:pairs], policy[pairs:]
        tc, tr = tokens[:pairs].to(policy.dtype), tokens[pairs:].to(policy.dtype)
        if reference is None:
            losses = simpo_loss(
                pc,
                pr,
                beta=self.beta,
                gamma=float(self.cfg.gamma),
                chosen_tokens=tc,
                rejected_tokens=tr,
                label_smoothing=float(self.cfg.label_smoothing),
            )
            return (losses, *simpo_rewards(pc, pr, self.beta, tc, tr))
        reference = reference.to(policy.dtype)
        rc, rr = reference[:pairs], reference[pairs:]
        if self.loss_name == "ipo":
            losses = ipo_loss(pc, pr, rc, rr, beta=self.beta, chosen_tokens=tc, rejected_tokens=tr)
        else:
            losses = sigmoid_loss(
                pc, pr, rc, rr, beta=self.beta, label_smoothing=float(self.cfg.label_smoothing)
            )
        return losses, self.beta * (pc - rc), self.beta * (pr - rr)

    def summarize(self, stats: dict[str, float]) -> dict[str, float]:
        units = max(stats["units"], 1.0)
        chosen = stats.get("reward_chosen_sum", 0.0) / units
        rejected = stats.get("reward_rejected_sum", 0.0) / units
        # The loop prefixes train/ and eval/: eval/rewards/accuracy, train/logps/chosen, ...
        return {
            "loss": stats["loss_sum"] / units,
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/margin": chosen - rejected,
            "rewards/accuracy": 100.0 * stats.get("correct", 0.0) / units,
            "logps/chosen": stats.get("logp_chosen_sum", 0.0) / units,
            "logps/rejected": stats.get("logp_rejected_sum", 0.0) / units,
            "nll/chosen": stats.get("nll_chosen_sum", 0.0) / units,
        } | summarize_truth(stats)


def _truth_eval(cfg: Any) -> TruthEval | None:
    if not cfg.eval_generate:
        return None
    if not cfg.eval_score_fn:
        raise ConfigError(
            "task=dpo with task.eval_generate=true scores the generated answers with "
            "task.eval_score_fn=<module>:<function> (e.g. bigft.demo.truth:score); it is unset"
        )
    return TruthEval(str(cfg.eval_score_fn))


def sequence_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each row's labelled tokens, how many there are) per row."""
    labels = batch["labels"]
    # Position t predicts token t+1; the last position predicts nothing.
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    has_target = targets != IGNORE_INDEX
    # Only response positions reach the output layer (see lm.causal_loss_sum).
    logits = forward_logits(model, batch, keep=has_target)
    token_logps = -F.cross_entropy(logits, targets[has_target], reduction="none")
    # Boolean selection runs row by row, so each kept position's row is its nonzero() row.
    rows = has_target.nonzero()[:, 0]
    logps = torch.zeros(labels.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    return logps.index_add(0, rows, token_logps), has_target.sum(dim=1)


def peft_model_of(model: torch.nn.Module) -> Any | None:
    """The peft model under the DDP / DeepSpeed wrappers, or None for a model without one."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model if hasattr(model, "disable_adapter") and hasattr(model, "peft_config") else None


def _prompt(record: Record) -> str | list[dict[str, str]]:
    value = record.fields.get("prompt")
    if not isinstance(value, list):
        return text_field(record, "prompt")
    where = f"{record.source}: field 'prompt'"
    ok = value and all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
        for m in value
    )
    if not ok:
        raise DataError(
            f"{where} must be text or a non-empty list of {{role, content}} messages with "
            f"roles {ROLES}; got {value!r}"
        )
    if value[-1]["role"] == "assistant":
        raise DataError(
            f"{where} ends with an assistant turn; the responses compared are the next "
            "assistant turn, so the prompt ends with a user (or system) turn"
        )
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _last_response(segments: list[Segment]) -> tuple[list[int], int]:
    """The ids up to the end of the last trained segment (the response), and where it starts.

    Earlier assistant turns of a chat prompt are context here, not what is compared.
    """
    last = max(i for i, (_, trained) in enumerate(segments) if trained)
    ids = [token for seg, _ in segments[:last] for token in seg]
    return [*ids, *segments[last][0]], len(ids)
