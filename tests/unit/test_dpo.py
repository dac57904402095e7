"""task=dpo: encoding and masks, sequence log-probabilities, the loss, the reference, the config."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from bigft.config import compose_config
from bigft.config.schema import TaskConfig, TaskName
from bigft.config.validate import validate
from bigft.data.collate import IGNORE_INDEX
from bigft.data.readers import Record
from bigft.errors import ConfigError, DataError
from bigft.tasks import build_task
from bigft.tasks.dpo import REFERENCE_KEY, peft_model_of, sequence_logps
from bigft.tasks.preference_losses import ipo_loss, sft_loss, sigmoid_loss


def cfg(**overrides) -> TaskConfig:
    return OmegaConf.structured(TaskConfig(name=TaskName.dpo, **overrides))


def rec(**fields) -> Record:
    return Record(fields, "pairs.jsonl:3")


def response_text(tokenizer, ids, start) -> str:
    return tokenizer.decode(ids[start:])


def test_text_prompt_is_formatted_as_sft_formats_an_instruction(tiny_tokenizer):
    task = build_task(cfg(), tiny_tokenizer)
    (ex,) = task.encode(rec(prompt="reverse cat", chosen="tac", rejected="cat"))
    prompt = "### Instruction:\nreverse cat\n\n### Response:\n"
    for side, response in (("chosen", "tac"), ("rejected", "cat")):
        ids, start = ex[f"{side}_ids"], ex[f"{side}_start"]
        assert tiny_tokenizer.decode(ids[:start]) == prompt
        assert ids[start:] == [
            *tiny_tokenizer(response, add_special_tokens=False)["input_ids"],
            tiny_tokenizer.eos_token_id,
        ]


def test_rankings_expand_to_all_ordered_pairs(tiny_tokenizer):
    task = build_task(cfg(), tiny_tokenizer)
    examples = task.encode(rec(prompt="p", responses=["a", "b", "c"]))
    names = [
        (
            response_text(tiny_tokenizer, ex["chosen_ids"], ex["chosen_start"]),
            response_text(tiny_tokenizer, ex["rejected_ids"], ex["rejected_start"]),
        )
        for ex in examples
    ]
    eos = tiny_tokenizer.eos_token
    assert names == [(f"a{eos}", f"b{eos}"), (f"a{eos}", f"c{eos}"), (f"b{eos}", f"c{eos}")]


def test_reviewers_rankings_pair_by_consensus_and_ties_make_no_pair(tiny_tokenizer):
    """As task=reward reads them: two reviewers who disagree on a and b tie them (Borda), so the
    pair (a, b) is not trained on; both put c last."""
    task = build_task(cfg(), tiny_tokenizer)
    record = rec(prompt="p", responses=["a", "b", "c"], rankings=[[0, 1, 2], [1, 0, 2]])
    eos = tiny_tokenizer.eos_token
    names = [
        (
            response_text(tiny_tokenizer, ex["chosen_ids"], ex["chosen_start"]),
            response_text(tiny_tokenizer, ex["rejected_ids"], ex["rejected_start"]),
        )
        for ex in task.encode(record)
    ]
    assert names == [(f"a{eos}", f"c{eos}"), (f"b{eos}", f"c{eos}")]
    assert task.encode(rec(prompt="p", responses=["a", "b"], rankings=[[0, 1], [1, 0]])) == []


def test_chat_prompts_score_only_the_final_response(chat_tokenizer):
    task = build_task(cfg(), chat_tokenizer)
    (text,) = task.encode(rec(prompt="Hi", chosen="Hello", rejected="Go"))
    assert (
        chat_tokenizer.decode(text["chosen_ids"]) == "<|user|>\nHi</s>\n<|assistant|>\nHello</s>\n"
    )
    assert response_text(chat_tokenizer, text["chosen_ids"], text["chosen_start"]) == (
        "Hello</s>\n"
    )
    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Count"},
    ]
    (ex,) = task.encode(rec(prompt=chat, chosen="1 2 3", rejected="3 2 1"))
    # The earlier assistant turn is context: only the compared response is scored.
    assert response_text(chat_tokenizer, ex["chosen_ids"], ex["chosen_start"]) == "1 2 3</s>\n"
    assert response_text(chat_tokenizer, ex["rejected_ids"], ex["rejected_start"]) == (
        "3 2 1</s>\n"
    )
    with pytest.raises(DataError, match=r"pairs.jsonl:3: field 'prompt' ends with an assistant"):
        task.encode(rec(prompt=chat[:2], chosen="a", rejected="b"))
    with pytest.raises(DataError, match=r"pairs.jsonl:3: field 'prompt' must be text or"):
        task.encode(rec(prompt=[{"role": "robot", "content": "x"}], chosen="a", rejected="b"))
    with pytest.raises(DataError, match=r"pairs.jsonl:3: no 'responses' or 'chosen'"):
        task.encode(rec(prompt="Hi", answer="x"))


def test_overlong_pairs_are_cut_from_the_right_or_dropped(tiny_tokenizer):
    long = " ".join(["fox"] * 40)
    task = build_task(cfg(max_length=24), tiny_tokenizer)
    (ex,) = task.encode(rec(prompt="p", chosen=long, rejected="dog"))
    assert ex["truncated"] and len(ex["chosen_ids"]) == 24
    assert ex["rejected_ids"][-1] == tiny_tokenizer.eos_token_id
    drop = build_task(cfg(max_length=24, overlong="drop"), tiny_tokenizer)
    assert drop.encode(rec(prompt="p", chosen=long, rejected="dog")) == []
    with pytest.raises(DataError, match=r"pairs.jsonl:3: the prompt is \d+ tokens"):
        task.encode(rec(prompt=long, chosen="a", rejected="b"))


def test_collate_masks_prompts_and_puts_chosen_rows_first(tiny_tokenizer):
    task = build_task(cfg(), tiny_tokenizer)
    examples = task.encode(rec(prompt="p", responses=["a b c", "d", "e f"]))
    batch = task.collate(examples)
    assert batch["input_ids"].shape[0] == 6 and int(batch["num_units"]) == 3
    for row, (side, ex) in enumerate(
        [("chosen", ex) for ex in examples] + [("rejected", ex) for ex in examples]
    ):
        ids, start = ex[f"{side}_ids"], ex[f"{side}_start"]
        labels = batch["labels"][row]
        assert (labels[:start] == IGNORE_INDEX).all()
        assert labels[start : len(ids)].tolist() == ids[start:]
        assert (labels[len(ids) :] == IGNORE_INDEX).all()
    assert REFERENCE_KEY not in batch
    for i, ex in enumerate(examples):
        ex[REFERENCE_KEY] = [-1.0 - i, -10.0 - i]
    assert task.collate(examples)[REFERENCE_KEY].tolist() == [-1, -2, -3, -10, -11, -12]


def unpadded_logps(model, ids: list[int], start: int) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    return sum(float(logits[t - 1, ids[t]]) for t in range(start, len(ids)))


def test_sequence_logps_sum_the_response_tokens_of_each_unpadded_sequence(
    tiny_tokenizer, causal_lm
):
    task = build_task(cfg(), tiny_tokenizer)
    examples = task.encode(rec(prompt="quick brown", responses=["fox jumps over", "dog", "cat"]))
    batch = task.collate(examples)
    with torch.no_grad():
        logps, tokens = sequence_logps(causal_lm, batch)
    rows = [(ex["chosen_ids"], ex["chosen_start"]) for ex in examples]
    rows += [(ex["rejected_ids"], ex["rejected_start"]) for ex in examples]
    expected = [unpadded_logps(causal_lm, ids, start) for ids, start in rows]
    assert logps.tolist() == pytest.approx(expected, rel=1e-5)
    assert tokens.tolist() == [len(ids) - start for ids, start in rows]


def loss_with_precomputed_reference(task, model, responses: list[str]):
    """The task's loss on a ranking's pairs whose reference log-probs are −20 (chosen) and −21
    (rejected), and the policy's log-probs and token counts of the chosen and the rejected rows."""
    examples = task.encode(rec(prompt="p", responses=responses))
    for ex in examples:
        ex[REFERENCE_KEY] = [-20.0, -21.0]
    batch = task.collate(examples)
    out = task.loss(model, batch)
    with torch.no_grad():
        logps, tokens = sequence_logps(model, batch)
    pairs = len(examples)
    logps, tokens = logps.double(), tokens.double()
    return out, (logps[:pairs], logps[pairs:]), (tokens[:pairs], tokens[pairs:])


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_loss_and_metrics_from_precomputed_reference(tiny_tokenizer, causal_lm, loss):
    task = build_task(cfg(loss=loss, beta=0.5), tiny_tokenizer)
    out, (pc, pr), (tc, tr) = loss_with_precomputed_reference(
        task, causal_lm, ["fox", "brown dog", "cat"]
    )
    ref = torch.full((3,), -20.0).double()
    if loss == "ipo":
        expected = ipo_loss(pc, pr, ref, ref - 1, beta=0.5, chosen_tokens=tc, rejected_tokens=tr)
    else:
        expected = sigmoid_loss(pc, pr, ref, ref - 1, beta=0.5)
    assert float(out.loss_sum.detach()) == pytest.approx(float(expected.sum()), rel=1e-5)
    metrics = task.summarize(out.stats)
    chosen, rejected = 0.5 * (pc + 20), 0.5 * (pr + 21)
    assert metrics["rewards/chosen"] == pytest.approx(float(chosen.mean()), rel=1e-5)
    assert metrics["rewards/margin"] == pytest.approx(float((chosen - rejected).mean()), rel=1e-5)
    assert metrics["rewards/accuracy"] == pytest.approx(
        100 * float((chosen > rejected).double().mean())
    )
    assert metrics["logps/rejected"] == pytest.approx(float(pr.mean()), rel=1e-5)
    assert metrics["loss"] == pytest.approx(float(expected.mean()), rel=1e-5)


@pytest.mark.parametrize("sft_weight", [0.0, 0.5])
def test_sft_weight_adds_the_chosen_responses_nll_per_token(tiny_tokenizer, causal_lm, sft_weight):
    task = build_task(cfg(beta=0.5, sft_weight=sft_weight), tiny_tokenizer)
    out, (pc, pr), (tc, _) = loss_with_precomputed_reference(
        task, causal_lm, ["fox jumps", "brown dog", "cat"]
    )
    ref = torch.full((3,), -20.0).double()
    nll = -pc / tc
    dpo = sigmoid_loss(pc, pr, ref, ref - 1, beta=0.5)
    expected = dpo + sft_weight * nll
    assert float(out.loss_sum.detach()) == pytest.approx(float(expected.sum()), rel=1e-5)
    metrics = task.summarize(out.stats)
    # Reported whatever the weight, so a plain DPO run shows the chosen responses' fate too.
    assert metrics["nll/chosen"] == pytest.approx(float(nll.mean()), rel=1e-5)
    assert nll.tolist() == pytest.approx(sft_loss(pc, tc).tolist())
    assert metrics["loss"] == pytest.approx(float(expected.mean()), rel=1e-5)


def test_simpo_needs_no_reference(tiny_tokenizer, causal_lm):
    task = build_task(cfg(loss="simpo", beta=2.0, gamma=0.5), tiny_tokenizer)
    batch = task.collate(task.encode(rec(prompt="p", chosen="fox", rejected="brown dog")))
    out = task.loss(causal_lm, batch)  # a plain model, no reference: fine for SimPO
    with torch.no_grad():
        logps, tokens = sequence_logps(causal_lm, batch)
    avg = logps / tokens
    z = 2.0 * (avg[0] - avg[1]) - 0.5
    assert float(out.loss_sum.detach()) == pytest.approx(float(-torch.nn.functional.logsigmoid(z)))
    with pytest.raises(ConfigError, match=r"task\.reference=precompute"):
        build_task(cfg(), tiny_tokenizer).loss(causal_lm, batch)


def test_reference_is_the_policy_with_adapters_disabled(tiny_tokenizer, tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    task = build_task(cfg(), tiny_tokenizer)
    batch = task.collate(task.encode(rec(prompt="p", chosen="fox", rejected="brown dog")))
    with torch.no_grad():
        base_logps = sequence_logps(base, batch)[0]
    policy = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj"]))
    for name, param in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # the adapters change the model
    with torch.no_grad():
        policy_logps = sequence_logps(policy, batch)[0]
    assert not torch.allclose(policy_logps, base_logps)
    wrapped = torch.nn.Module()
    wrapped.module = policy  # as DDP and DeepSpeed hold the model
    assert peft_model_of(wrapped) is policy
    reference = task._reference(wrapped, batch)
    assert reference.tolist() == pytest.approx(base_logps.tolist(), rel=1e-6)
    assert not reference.requires_grad


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("task.packing=true", "task.packing=true with task=dpo: .*chosen row and one rejected"),
        ("task.beta=0", "task.beta=0.0 is not allowed: expected > 0"),
        ("task.label_smoothing=0.5", "task.label_smoothing=0.5 is not allowed"),
        ("task.sft_weight=-1", "task.sft_weight=-1.0 is not allowed: expected >= 0"),
        ("task.loss=ipo task.label_smoothing=0.1", "label smoothing applies to the logistic"),
        ("task.loss=simpo task.reference=precompute", "SimPO uses no reference model"),
        ("task.reference=/no/such/run", "task.reference='/no/such/run' is not a directory"),
    ],
)
def test_dpo_config_mistakes_are_refused(override, message):
    base = ["task=dpo", "model=local", "model.path=/m", "data=local", "data.train=p.jsonl"]
    with pytest.raises(ConfigError, match=message):
        validate(compose_config([*base, *override.split()]))
