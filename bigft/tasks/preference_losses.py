"""The preference-optimisation losses (task=dpo), as pure functions of sequence log-probabilities.

Every function returns one loss per pair; the task sums them (the loop divides by the pairs of
the window). Inputs are summed log-probabilities of each response's tokens given its prompt:
`policy_*` under the model being trained, `reference_*` under the frozen reference.

- sigmoid (DPO, Rafailov et al. 2023, eq. 7), with the conservative-DPO label smoothing ε of
  Mitchell (2023): the preference label is taken to be wrong with probability ε.
- ipo (Azar et al. 2023, eq. 17): (h − 1/(2β))², where h is the difference of log-ratios. The
  paper writes h with whole-sequence log-probabilities; bigft follows TRL (which says it checked
  this with the paper's authors) and averages each log-ratio over its response's tokens, so that
  1/(2β) means the same target whatever the responses' lengths.
- simpo (Meng et al. 2024, eq. 6): reference-free, −log σ(β/|y_w| log π(y_w|x) −
  β/|y_l| log π(y_l|x) − γ), γ the target reward margin.
- the SFT term (RPO, Pang et al. 2024; TRL's `rpo_alpha`): any of the above plus α times
  the chosen response's negative log-likelihood per token. The preference losses see only
  differences of log-probabilities, so they can grow the margin by pushing the rejected responses
  down while the chosen ones fall too; this term holds the chosen responses' own likelihood up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logistic_loss(z: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """−log σ(z), or with label smoothing ε: −(1−ε) log σ(z) − ε log σ(−z)."""
    loss = -F.logsigmoid(z)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-z)
    return loss


def sigmoid_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """DPO: −log σ(β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))])."""
    logits = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return logistic_loss(beta * logits, label_smoothing)


def ipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
) -> torch.Tensor:
    """IPO: (h − 1/(2β))², h the difference of the per-token log-ratios (see the module doc)."""
    chosen_ratio = (policy_chosen - reference_chosen) / chosen_tokens.clamp(min=1)
    rejected_ratio = (policy_rejected - reference_rejected) / rejected_tokens.clamp(min=1)
    return (chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2


def simpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    *,
    beta: float,
    gamma: float,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """SimPO: −log σ(β·mean log π(y_w) − β·mean log π(y_l) − γ); no reference model."""
    chosen, rejected = simpo_rewards(
        policy_chosen, policy_rejected, beta, chosen_tokens, rejected_tokens
    )
    return logistic_loss(chosen - rejected - gamma, label_smoothing)


def simpo_rewards(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    beta: float,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SimPO's implicit rewards: β times the mean log-probability of each response's tokens."""
    return (
        beta * policy_chosen / chosen_tokens.clamp(min=1),
        beta * policy_rejected / rejected_tokens.clamp(min=1),
    )


def sft_loss(policy_chosen: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """The chosen response's negative log-likelihood per token: −log π(y_w|x) / |y_w|."""
    return -policy_chosen / chosen_tokens.clamp(min=1)
