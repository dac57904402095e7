"""Tokenizer and model loading from a local directory or a hub id, with optional 4-/8-bit bases.

Everything the user can get wrong here (a missing directory, a hub id that cannot be fetched) is
turned into a ConfigError that says what to change, before any weights are read.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from bigft.config.paths import looks_local
from bigft.errors import ConfigError

log = logging.getLogger(__name__)

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HEADS = ("causal_lm", "sequence_classification")
# Names transformers uses for a classification / reward head, most common first.
CLASSIFIER_HEADS = ("score", "classifier", "classification_head", "v_head")

# transformers' messages that read as failures where bigft knows they are not (see their uses).
TRANSFORMERS_LOGGER = "transformers.modeling_utils"
LOAD_REPORT = "LOAD REPORT"
PADDING_WARNING = "We strongly recommend passing in an `attention_mask`"


class _HoldBack(logging.Filter):
    """Keeps the records whose message contains `text` (for the caller to judge); the rest pass."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.text in record.getMessage():
            self.held.append(record)
            return False
        return True


@contextlib.contextmanager
def held_back(text: str, logger: str = TRANSFORMERS_LOGGER) -> Iterator[_HoldBack]:
    """While inside, `logger`'s messages containing `text` are held instead of printed."""
    hold = _HoldBack(text)
    target = logging.getLogger(logger)
    target.addFilter(hold)
    try:
        yield hold
    finally:
        target.removeFilter(hold)


def packed_rows_unmasked() -> contextlib.AbstractContextManager:
    """For a forward of packed rows: no 2-D attention mask is passed on purpose (the position
    ids keep examples apart and make the padding a block of its own, bigft/data/collate.py), so
    transformers' advice to pass one when it sees pad ids is wrong there and is not printed."""
    return held_back(PADDING_WARNING)


def torch_dtype(name: object) -> torch.dtype:
    """ "bf16" (or the DType enum) → torch.bfloat16."""
    key = str(name)
    if key not in TORCH_DTYPES:
        raise ConfigError(f"dtype={key!r} is not allowed: expected one of {sorted(TORCH_DTYPES)}")
    return TORCH_DTYPES[key]


def _hub_error(source: str, what: str, err: Exception) -> ConfigError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    why = "HF_HUB_OFFLINE is set" if offline else f"{type(err).__name__}: {err}".splitlines()[0]
    return ConfigError(
        f"cannot load {what} {source!r} from the Hugging Face hub ({why}). If the model is on "
        f"disk, point at its directory with model.path=/path/to/model (a directory that contains "
        f"config.json); otherwise check the id, your network and, for gated models, HF_TOKEN"
    )


def resolve_source(source: str, *, what: str = "model", key: str | None = None) -> str:
    """Check that `source` is a usable local model directory, or leave it as a hub id.

    Returns the path to pass to from_pretrained (with ~ expanded for local directories).
    `key` names the config key the path came from, in the messages.
    """
    if not looks_local(source):
        return source
    path = Path(source).expanduser()
    where = f"{key}={source!r}" if key else f"{what} path {source!r}"
    if not path.exists():
        raise ConfigError(f"{where} does not exist (resolved to {path.absolute()})")
    if not path.is_dir():
        raise ConfigError(f"{where} is not a directory")
    # A tokenizer-only directory has no config.json; a model directory must have one.
    if what != "tokenizer" and not (path / "config.json").is_file():
        raise ConfigError(
            f"{where} is not a Hugging Face model directory: it must be a "
            f"directory that contains config.json"
        )
    return str(path)


def _hub_call(source: str, what: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run a from_pretrained call; a hub id that cannot be fetched becomes a ConfigError."""
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    try:
        return fn(*args, **kwargs)
    except (OSError, EntryNotFoundError, HFValidationError) as err:
        if looks_local(source):  # e.g. a directory with config.json but no weights
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"cannot load {what} from {source!r}: {first}") from err
        raise _hub_error(source, what, err) from err


def load_tokenizer(model_cfg: Any) -> PreTrainedTokenizerBase:
    """The tokenizer at `model.tokenizer` (or `model.path`), padded on the right.

    A tokenizer without a pad token gets its EOS token as pad: the collators mask padding out of
    the loss with the attention mask / labels, so the id only has to be a valid embedding.
    """
    # Without model.tokenizer the tokenizer is model.path's: a mistake there is model.path's.
    key, what = ("model.tokenizer", "tokenizer") if model_cfg.tokenizer else ("model.path", "model")
    source = resolve_source(model_cfg.tokenizer or model_cfg.path, what=what, key=key)
    tokenizer = _hub_call(
        source,
        "tokenizer",
        AutoTokenizer.from_pretrained,
        source,
        revision=model_cfg.revision,
        trust_remote_code=bool(model_cfg.trust_remote_code),
    )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"tokenizer {source!r} has neither a pad token nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
        log.info("tokenizer has no pad token: using its EOS token %r as pad", tokenizer.eos_token)
    tokenizer.padding_side = "right"
    return tokenizer


def model_config(model_cfg: Any) -> tuple[str, Any]:
    """model.path resolved (for from_pretrained) and its transformers config."""
    source = resolve_source(model_cfg.path, key="model.path")
    config = _hub_call(
        source,
        "model",
        AutoConfig.from_pretrained,
        source,
        revision=model_cfg.revision,
        trust_remote_code=bool(model_cfg.trust_remote_code),
    )
    return source, config


# Where configs keep their number of positions (Llama and most: the first; GPT-2: the second).
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")


def check_max_length(model_cfg: Any, max_length: int) -> None:
    """Refuse a task.max_length longer than the model's positions, before any weights load."""
    source, config = model_config(model_cfg)
    found = [(k, getattr(config, k, None)) for k in POSITION_KEYS]
    found = [(k, n) for k, n in found if isinstance(n, int)]
    if found and max_length > found[0][1]:
        name, positions = found[0]
        raise ConfigError(
            f"task.max_length={max_length} is longer than the model's {positions} positions "
            f"({name} in {source}'s config.json): set task.max_length to at most {positions}"
        )


def quantization_config(method_cfg: Any) -> Any | None:
    """The BitsAndBytesConfig for method=qlora, None for every other method."""
    if str(method_cfg.name) != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    if method_cfg.bits == 8:
        # LLM.int8 has no compute-dtype knob; it runs on CPU too (bitsandbytes >= 0.46).
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch_dtype(method_cfg.compute_dtype)
    # Storage in a float dtype lets ZeRO-3 shard the packed weights like any other parameter.
    storage = torch_dtype(method_cfg.quant_storage) if method_cfg.quant_storage else torch.uint8
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=method_cfg.quant_type,
        bnb_4bit_use_double_quant=bool(method_cfg.double_quant),
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=storage,
    )


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute activations in backward (non-reentrant), for any method.

    With a frozen embedding (LoRA, QLoRA, freeze) the checkpointed blocks' inputs do not require
    grad; the reentrant variant would then drop every gradient inside them, and some wrappers
    still use it, so the embedding output is marked as requiring grad as well.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.enable_input_require_grads()


def _auto_class(head: str) -> Any:
    if head == "causal_lm":
        return AutoModelForCausalLM
    if head == "sequence_classification":
        return AutoModelForSequenceClassification
    raise ConfigError(f"unknown model head {head!r}: expected one of {HEADS}")


def _is_new_head(loading: dict[str, Any]) -> bool:
    """A causal-LM checkpoint loaded with a new classification head: its head is missing (to be
    trained) and its lm_head is unused, and nothing else is amiss."""
    missing = loading.get("missing_keys") or []
    unexpected = loading.get("unexpected_keys") or []
    return (
        bool(missing)
        and all(k.split(".")[0] in CLASSIFIER_HEADS for k in missing)
        and all(k.split(".")[0] == "lm_head" for k in unexpected)
        and not loading.get("mismatched_keys")
        and not loading.get("error_msgs")
    )


def _explain_load_report(
    model: torch.nn.Module, loading: dict[str, Any], held: list[logging.LogRecord], head: str
) -> None:
    """transformers' load report, as one line where it only says that the head is new."""
    if not held:
        return
    if head == "sequence_classification" and _is_new_head(loading):
        new = sorted({k.split(".")[0] for k in loading["missing_keys"]})
        log.info(
            "new %s head %s with %d outputs, randomly initialised for training; the checkpoint's "
            "lm_head is not used (expected: transformers' load report of it is not shown)",
            type(model).__name__,
            ", ".join(new),
            model.config.num_labels,
        )
        return
    target = logging.getLogger(TRANSFORMERS_LOGGER)
    for record in held:  # something else is amiss: the user sees transformers' report
        target.handle(record)


def keep_4bit_layout_stable(model: torch.nn.Module) -> None:
    """Turn off bitsandbytes' CPU inference repacking of 4-bit weights.

    On CPUs with AVX512-BF16, a Linear4bit in eval mode rewrites its packed weight in place into
    another layout on first use. During training that breaks what relies on the stored layout:
    ZeRO-3 shards and gathers the storage, checkpoints and exports save it. Training and eval
    then both use the ordinary 4-bit kernels.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_model(
    model_cfg: Any,
    method_cfg: Any,
    head: str,
    num_labels: int | None,
    tokenizer: PreTrainedTokenizerBase,
    *,
    device: str | torch.device | None = None,
    dtype: str | None = None,
) -> torch.nn.Module:
    """The base model for `head`, in `dtype` (None: `model.dtype`), quantized for method=qlora.

    `device` places the weights at load time (needed to quantize straight onto a GPU); None
    loads on the CPU and leaves placement to the caller. `dtype` is what trainer.precision
    loads in (bigft.config.precision.load_dtype): fp32 for precision=fp32, bf16 for bf16-true.
    """
    # Fetch the config first: a bad hub id fails here, in a second, not after a download starts.
    source, config = model_config(model_cfg)
    kwargs: dict[str, Any] = {
        "revision": model_cfg.revision,
        "trust_remote_code": bool(model_cfg.trust_remote_code),
        "dtype": torch_dtype(dtype or model_cfg.dtype),
        "attn_implementation": model_cfg.attn_implementation,
    }
    if head == "sequence_classification":
        config.num_labels = num_labels or 1
        # The classifier pools the last non-pad token; it finds it through pad_token_id.
        config.pad_token_id = tokenizer.pad_token_id
    quant = quantization_config(method_cfg)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if device is not None:
        kwargs["device_map"] = {"": device}
    with held_back(LOAD_REPORT) as report:
        model, loading = _hub_call(
            source,
            "model",
            _auto_class(head).from_pretrained,
            source,
            config=config,
            output_loading_info=True,
            **kwargs,
        )
    _explain_load_report(model, loading, report.held, head)
    if quant is not None:
        keep_4bit_layout_stable(model)
    if model_cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model
