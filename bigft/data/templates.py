"""Turning instruction and chat records into tokens, with a mask of what the loss learns.

A record becomes a list of segments (token ids, trained?). Each segment is tokenized on its own,
so the boundary between prompt and response is exact and the prompt tokens are the very tokens a
model later sees at generation time.

Chat records without a chat template use this plain format, one turn after another:

    <|system|>\\n{content}\\n
    <|user|>\\n{content}\\n
    <|assistant|>\\n{content}</s>\\n      (the loss covers only "{content}</s>")

where </s> is the tokenizer's EOS token, so a tuned model learns to stop after its answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bigft.data.collate import IGNORE_INDEX
from bigft.data.readers import Record
from bigft.errors import ConfigError, DataError

ROLES = ("system", "user", "assistant")
SFT_FORMATS = (
    "sft expects alpaca records {instruction, input (optional), output} or chat records "
    "{messages: [{role, content}, ...]}; rename your fields with data.fields"
)

Segment = tuple[list[int], bool]


@dataclass
class SftTokens:
    input_ids: list[int]
    labels: list[int]
    # What generation starts from (everything before the last response) and that response.
    prompt_ids: list[int]
    reference: str


def special_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before any text by default (usually [bos] or [])."""
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return list(with_special[:start])
    return []


def eos_id(tokenizer: Any, why: str) -> int:
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"the tokenizer has no EOS token, which {why} needs")
    return tokenizer.eos_token_id


def uses_chat_template(tokenizer: Any, use_chat_template: bool) -> bool:
    return bool(use_chat_template and getattr(tokenizer, "chat_template", None))


def text_field(record: Record, name: str, *, required: bool = True) -> str | None:
    """A field as text (numbers allowed), or a DataError naming the record and field."""
    value = record.fields.get(name)
    if value is None:
        if required and name in record.fields:
            raise DataError(f"{record.source}: field {name!r} is null; expected text")
        if required:
            present = ", ".join(sorted(record.fields)) or "none"
            raise DataError(f"{record.source}: missing field {name!r} (fields: {present})")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{record.source}: field {name!r} must be text, got {type(value).__name__}")
    return str(value)


def sft_tokens(record: Record, tokenizer: Any, cfg: Any) -> SftTokens:
    """Tokens and labels for an alpaca or chat record; labels mask everything but responses."""
    templated = uses_chat_template(tokenizer, cfg.use_chat_template)
    if "messages" in record.fields:
        messages = chat_messages(record)
    elif "instruction" in record.fields or "output" in record.fields:
        messages = alpaca_messages(record)
    else:
        present = ", ".join(sorted(record.fields)) or "none"
        raise DataError(
            f"{record.source}: no 'instruction' or 'messages' field (fields: {present}). "
            f"{SFT_FORMATS}"
        )
    if templated:
        segments = template_segments(messages, tokenizer, record.source)
    elif "messages" in record.fields:
        segments = plain_chat_segments(messages, tokenizer)
    else:
        segments = alpaca_segments(record, tokenizer, cfg)
    return _assemble(segments, reference=messages[-1]["content"])


def alpaca_messages(record: Record) -> list[dict[str, str]]:
    """The user/assistant pair an alpaca record stands for (instruction + input, output)."""
    try:
        instruction = text_field(record, "instruction")
        output = text_field(record, "output")
    except DataError as err:
        raise DataError(f"{err}. {SFT_FORMATS}") from None
    extra = text_field(record, "input", required=False)
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def chat_messages(record: Record) -> list[dict[str, str]]:
    """Validated {role, content} messages, up to and including the last assistant turn."""
    messages = record.fields["messages"]
    where = f"{record.source}: field 'messages'"
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where} must be a non-empty list of {{role, content}} objects")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), str):
            raise DataError(f"{where}[{i}] must be an object with a text 'content', got {msg!r}")
        if msg.get("role") not in ROLES:
            raise DataError(f"{where}[{i}] has role {msg.get('role')!r}; allowed: {ROLES}")
    if messages[0]["role"] == "assistant":
        raise DataError(f"{where} starts with an assistant turn; put a user turn first")
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise DataError(f"{where} has no assistant turn, so there is no response to learn")
    # Turns after the last response teach nothing: the loss is on assistant turns only.
    last = len(roles) - 1 - roles[::-1].index("assistant")
    return [{"role": m["role"], "content": m["content"]} for m in messages[: last + 1]]


def alpaca_segments(record: Record, tokenizer: Any, cfg: Any) -> list[Segment]:
    has_input = bool(text_field(record, "input", required=False))
    template = cfg.prompt_template_with_input if has_input else cfg.prompt_template
    try:
        prompt = template.format(**record.fields)
    except KeyError as err:
        raise DataError(f"{record.source}: the prompt template needs field {err}") from None
    return instruction_segments(prompt, text_field(record, "output"), tokenizer, "sft")


def instruction_segments(prompt: str, response: str, tokenizer: Any, task: str) -> list[Segment]:
    """A formatted instruction prompt and its response, as task=sft (and dpo after it) train."""
    eos = eos_id(tokenizer, f"{task} without a chat template")
    return [
        (special_prefix(tokenizer) + _ids(tokenizer, prompt), False),
        ([*_ids(tokenizer, response), eos], True),
    ]


def plain_chat_segments(messages: list[dict[str, str]], tokenizer: Any) -> list[Segment]:
    eos = eos_id(tokenizer, "sft without a chat template")
    segments: list[Segment] = [(special_prefix(tokenizer), False)]
    for msg in messages:
        if msg["role"] == "assistant":
            segments.append((_ids(tokenizer, "<|assistant|>\n"), False))
            segments.append(([*_ids(tokenizer, msg["content"]), eos], True))
            segments.append((_ids(tokenizer, "\n"), False))
        else:
            segments.append((_ids(tokenizer, f"<|{msg['role']}|>\n{msg['content']}\n"), False))
    return segments


def template_segments(messages: list[dict[str, str]], tokenizer: Any, source: str) -> list[Segment]:
    """Segments from the chat template, found by rendering ever longer prefixes of the chat.

    An assistant turn is what rendering it adds after the prefix rendered with a generation
    prompt, so the assistant header stays in the prompt and the turn's end token is learned.
    """
    done = ""
    texts: list[tuple[str, bool]] = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True)
        upto = _render(tokenizer, messages[: i + 1], False)
        if not before.startswith(done) or not upto.startswith(before):
            raise DataError(
                f"{source}: the tokenizer's chat template renders earlier turns differently as "
                "the chat grows, so response tokens cannot be located; set "
                "task.use_chat_template=false"
            )
        texts += [(before[len(done) :], False), (upto[len(before) :], True)]
        done = upto
    return [(_ids(tokenizer, text), trained) for text, trained in texts if text]


def prompt_response_ids(prompt: str, response: str, tokenizer: Any, templated: bool) -> list[int]:
    """One prompt and response as a scored sequence (reward models), ending with EOS."""
    eos = eos_id(tokenizer, "scoring a response")
    if templated:
        chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        ids = _ids(tokenizer, _render(tokenizer, chat, False))
    else:
        ids = special_prefix(tokenizer) + _ids(tokenizer, f"{prompt}\n\n{response}")
    # The head reads the last token; ending every sequence the same way makes that token comparable.
    return ids if ids and ids[-1] == eos else [*ids, eos]


def _assemble(segments: list[Segment], reference: str) -> SftTokens:
    input_ids: list[int] = []
    labels: list[int] = []
    prompt_end = 0
    for ids, trained in segments:
        if trained:
            prompt_end = len(input_ids)
        input_ids += ids
        labels += ids if trained else [IGNORE_INDEX] * len(ids)
    return SftTokens(input_ids, labels, input_ids[:prompt_end], reference)


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def _ids(tokenizer: Any, text: str) -> list[int]:
    # Special tokens are spelled out by the template (or added by the caller), never implied.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
