"""A trained reward model as a reward source: `reward.model=<run dir | output dir | model dir>`.

Accepted: a bigft reward run (`<run>/model`), a bigft output directory (adapter or full model,
4-bit base as in training), a peft adapter directory whose adapter_config.json names its base, or
a Hugging Face sequence-classification model directory. Responses are scored in exactly the
format task=reward trained on (`prompt_response_ids`: the chat template, or "prompt\\n\\nresponse",
then EOS; cut to max_length keeping the EOS), so the score the policy chases is the one learned.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bigft.data.collate import collate_sequences
from bigft.data.templates import prompt_response_ids, uses_chat_template
from bigft.errors import ConfigError
from bigft.models.load import torch_dtype
from bigft.outputs import MODEL_SUBDIR, OUTPUT_FILE, load_output, read_metadata
from bigft.run_dirs import finished_output
from bigft.tasks.base import cut, forward_logits, pad_token_id

log = logging.getLogger(__name__)

__all__ = ["RewardModelScorer", "load_reward_model"]


class RewardModelScorer:
    """Scores (prompt, response) texts with a frozen sequence-classification model (1 label)."""

    def __init__(
        self,
        source: str | Path,
        *,
        name: str = "model",
        device: torch.device | str | None = None,
        dtype: str | None = None,
        use_chat_template: bool = True,
        max_length: int = 512,
        batch_size: int = 16,
        key: str = "reward.model",
    ) -> None:
        self.name = name
        self.model, self.tokenizer = load_reward_model(source, dtype=dtype, device=device, key=key)
        self.model.requires_grad_(False)
        self.device = next(self.model.parameters()).device
        self.pad_id = pad_token_id(self.tokenizer)
        self.templated = uses_chat_template(self.tokenizer, use_chat_template)
        self.max_length = max_length
        self.batch_size = batch_size

    def encode(self, prompt: str, response: str) -> list[int]:
        """The token ids scored for one sample: task=reward's `encode`, for one response."""
        ids = prompt_response_ids(prompt, response, self.tokenizer, self.templated)
        return cut(ids, self.max_length, keep_last=True)

    @torch.no_grad()
    def score(
        self, prompts: Sequence[str], responses: Sequence[str], fields: Sequence[dict] | None = None
    ) -> torch.Tensor:
        """Rewards [batch], float32, on the CPU."""
        seqs = [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        out = []
        for start in range(0, len(seqs), self.batch_size):
            batch = collate_sequences(seqs[start : start + self.batch_size], self.pad_id)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            out.append(forward_logits(self.model, batch).squeeze(-1).cpu())
        return torch.cat(out) if out else torch.zeros(0)


def load_reward_model(
    source: str | Path,
    *,
    dtype: str | None = None,
    device: torch.device | str | None = None,
    key: str = "reward.model",
) -> tuple[torch.nn.Module, Any]:
    """(model in eval mode, tokenizer) from any of the directories this module accepts.

    `device` places the weights while loading: a 4-bit base cannot be moved afterwards.
    """
    path = Path(source).expanduser()
    where = f"{key}={str(source)!r}"
    output = finished_output(path, key=key)
    if output is not None:
        path = output
        meta = read_metadata(path)
        _check_head(meta["head"] == "sequence_classification", meta["head"], where)
        model, tokenizer = load_output(path, dtype=dtype, device=device)
    elif (path / "adapter_config.json").is_file():
        model, tokenizer = _load_peft_adapter(path, _load_kwargs(dtype, device), where)
    elif (path / "config.json").is_file():
        model, tokenizer = _load_hf_model(path, _load_kwargs(dtype, device), where)
    elif path.exists():
        raise ConfigError(
            f"{where} is neither a bigft run (no {MODEL_SUBDIR}/{OUTPUT_FILE}) nor a model "
            "directory (no config.json or adapter_config.json)"
        )
    else:
        raise ConfigError(f"{where} does not exist")
    labels = model.config.num_labels
    if labels != 1:
        raise ConfigError(f"{where} has {labels} outputs; a reward model has 1 (num_labels=1)")
    # transformers finds each row's last token as the last one that is not the pad id.
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def _check_head(is_classifier: bool, what: str, where: str) -> None:
    if not is_classifier:
        raise ConfigError(
            f"{where} holds a {what} model, not a reward model (a sequence-classification "
            "model with one output, as task=reward trains); loading it as one would score with "
            "a randomly initialised head"
        )


def _load_kwargs(dtype: str | None, device: torch.device | str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if dtype:
        kwargs["dtype"] = torch_dtype(dtype)
    if device is not None:
        kwargs["device_map"] = {"": device}
    return kwargs


def _load_hf_model(path: Path, kwargs: dict[str, Any], where: str) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    archs = config.architectures or []
    _check_head(any("SequenceClassification" in a for a in archs), "/".join(archs), where)
    model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    return model, AutoTokenizer.from_pretrained(path)


def _load_peft_adapter(path: Path, kwargs: dict[str, Any], where: str) -> tuple[Any, Any]:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    adapter = json.loads((path / "adapter_config.json").read_text())
    task_type = adapter.get("task_type")
    _check_head(task_type == "SEQ_CLS", f"peft task_type={task_type}", where)
    base = adapter.get("base_model_name_or_path")
    if not base or not Path(base).expanduser().is_dir():
        raise ConfigError(
            f"{where}: adapter_config.json names base model {base!r}, which is not a local "
            "directory"
        )
    has_tokenizer = (path / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(path if has_tokenizer else base)
    kwargs = {**kwargs, "num_labels": 1, "pad_token_id": tokenizer.pad_token_id}
    model = AutoModelForSequenceClassification.from_pretrained(base, **kwargs)
    return PeftModel.from_pretrained(model, path), tokenizer
