"""Tasks: encoding and masks, truncation and drops, and losses checked against transformers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from omegaconf import OmegaConf

from bigft.config.schema import TaskConfig, TaskName
from bigft.data.collate import IGNORE_INDEX, collate_sequences
from bigft.data.readers import Record
from bigft.data.tokenize import cache_key, tokenize_records
from bigft.errors import ConfigError, DataError
from bigft.tasks import build_task
from bigft.tasks.base import forward_logits
from bigft.tasks.classify import macro_f1
from bigft.tasks.reward import ranking_loss_sum
from bigft.tasks.sft import exact_matches

TEXTS = ["The quick brown fox.", "Numbers: 0 1 2 3 4 5 6.", "A reward model scores.", "cat"]


def cfg(name: str, **overrides) -> TaskConfig:
    # Through OmegaConf, as the training command builds it (enums become enum members).
    return OmegaConf.structured(TaskConfig(name=TaskName(name), **overrides))


def rec(source: str = "t.jsonl:1", **fields) -> Record:
    return Record(fields, source)


def seq_classifier(path, num_labels: int):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    assert model.config.pad_token_id is not None
    return model.eval()


def trained_text(tokenizer, example) -> str:
    return tokenizer.decode([x for x in example["labels"] if x != IGNORE_INDEX])


# --- lm -------------------------------------------------------------------------------------


def test_lm_encode_collate(tiny_tokenizer):
    task = build_task(cfg("lm"), tiny_tokenizer)
    examples = [task.encode(rec(text=t))[0] for t in TEXTS[:2]]
    assert all(ex["input_ids"][-1] == tiny_tokenizer.eos_token_id for ex in examples)
    batch = task.collate(examples)
    lengths = [len(ex["input_ids"]) for ex in examples]
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["labels"][batch["attention_mask"] == 0].eq(IGNORE_INDEX).all()
    assert batch["num_units"].item() == sum(n - 1 for n in lengths)
    assert batch["num_tokens"].item() == sum(lengths) and batch["num_units"].dim() == 0


def test_lm_overlong_truncate_and_drop_counts(tiny_tokenizer):
    records = [rec(text=t) for t in TEXTS]  # only "cat</s>" fits in 4 tokens
    cut = tokenize_records(build_task(cfg("lm", max_length=4), tiny_tokenizer), records)
    assert (cut.truncated, cut.dropped, len(cut.examples)) == (3, 0, 4)
    assert all(len(ex["input_ids"]) <= 4 and "truncated" not in ex for ex in cut.examples)
    drop = build_task(cfg("lm", max_length=4, overlong="drop"), tiny_tokenizer)
    dropped = tokenize_records(drop, records)
    assert (dropped.truncated, dropped.dropped, len(dropped.examples)) == (0, 3, 1)
    with pytest.raises(DataError, match=r"all 3 records were dropped.*task\.max_length=4"):
        tokenize_records(drop, records[:3])


def test_lm_loss_matches_transformers_and_sums_over_micro_batches(tiny_tokenizer, causal_lm):
    task = build_task(cfg("lm"), tiny_tokenizer)
    examples = [task.encode(rec(text=t))[0] for t in TEXTS]
    batch = task.collate(examples)
    out = task.loss(causal_lm, batch)
    with torch.no_grad():
        reference = causal_lm(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")})
    mean = out.loss_sum / batch["num_units"]
    torch.testing.assert_close(mean, reference.loss, rtol=1e-5, atol=1e-5)
    halves = [task.collate(examples[:1]), task.collate(examples[1:])]
    total = sum(task.loss(causal_lm, b).loss_sum for b in halves)
    units = sum(b["num_units"] for b in halves)
    torch.testing.assert_close(total / units, mean, rtol=1e-5, atol=1e-5)
    metrics = task.summarize(task.eval_stats(causal_lm, batch))
    assert metrics["loss"] == pytest.approx(mean.item(), rel=1e-5)
    # The loop summarizes the summed training stats too.
    assert task.summarize(out.stats)["loss"] == pytest.approx(metrics["loss"], rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(mean.item()), rel=1e-4)
    assert math.isfinite(task.summarize({"loss_sum": 1e6, "units": 1.0})["perplexity"])


# --- sft ------------------------------------------------------------------------------------


def test_sft_alpaca_masks_the_prompt(tiny_tokenizer):
    task = build_task(cfg("sft"), tiny_tokenizer)
    (ex,) = task.encode(rec(instruction="reverse cat", output="tac"))
    prompt = "### Instruction:\nreverse cat\n\n### Response:\n"
    n_prompt = len(tiny_tokenizer(prompt)["input_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert trained_text(tiny_tokenizer, ex) == "tac</s>"
    assert tiny_tokenizer.decode(ex["input_ids"]) == prompt + "tac</s>"
    (with_input,) = task.encode(rec(instruction="reverse", input="dog", output="god"))
    assert "### Input:\ndog" in tiny_tokenizer.decode(with_input["input_ids"])
    batch = task.collate([ex, with_input])
    assert batch["num_units"].item() == sum(
        sum(x != IGNORE_INDEX for x in e["labels"]) for e in (ex, with_input)
    )


def test_sft_chat_without_template_trains_only_assistant_turns(tiny_tokenizer):
    task = build_task(cfg("sft"), tiny_tokenizer)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Count"},
        {"role": "assistant", "content": "1 2 3"},
    ]
    (ex,) = task.encode(rec(messages=messages))
    assert trained_text(tiny_tokenizer, ex) == "Hello</s>1 2 3</s>"
    assert tiny_tokenizer.decode(ex["input_ids"]) == (
        "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello</s>\n"
        "<|user|>\nCount\n<|assistant|>\n1 2 3</s>\n"
    )


def test_sft_chat_template_masks_are_exact(chat_tokenizer):
    task = build_task(cfg("sft", eval_generate=True), chat_tokenizer)
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Count"},
        {"role": "assistant", "content": "1 2 3"},
    ]
    (ex,) = task.encode(rec(messages=messages))
    full = chat_tokenizer.apply_chat_template(messages, tokenize=False)
    assert chat_tokenizer.decode(ex["input_ids"]) == full
    assert trained_text(chat_tokenizer, ex) == "Hello</s>\n1 2 3</s>\n"
    prompt = chat_tokenizer.apply_chat_template(
        messages[:3], tokenize=False, add_generation_prompt=True
    )
    assert chat_tokenizer.decode(ex["prompt_ids"]) == prompt
    assert chat_tokenizer.decode(ex["reference_ids"]) == "1 2 3"
    (alpaca,) = task.encode(rec(instruction="Do", input="this", output="done"))
    assert (
        chat_tokenizer.decode(alpaca["input_ids"])
        == "<|user|>\nDo\n\nthis</s>\n<|assistant|>\ndone</s>\n"
    )
    assert trained_text(chat_tokenizer, alpaca) == "done</s>\n"


def test_sft_bad_records_name_source_and_formats(tiny_tokenizer):
    task = build_task(cfg("sft"), tiny_tokenizer)
    with pytest.raises(DataError, match=r"a\.jsonl:7: no 'instruction' or 'messages'.*alpaca"):
        task.encode(rec("a.jsonl:7", question="q"))
    with pytest.raises(DataError, match=r"a\.jsonl:8: missing field 'output'.*chat records"):
        task.encode(rec("a.jsonl:8", instruction="q"))
    with pytest.raises(DataError, match=r"a\.jsonl:9: field 'messages'\[0\] has role 'bot'"):
        task.encode(rec("a.jsonl:9", messages=[{"role": "bot", "content": "x"}]))
    with pytest.raises(DataError, match="no assistant turn"):
        task.encode(rec(messages=[{"role": "user", "content": "x"}]))


def test_sft_overlong_truncate_drop_and_no_response_left(tiny_tokenizer):
    long_answer = rec(instruction="say", output="The quick brown fox jumps over the lazy dog.")
    n_prompt = len(tiny_tokenizer("### Instruction:\nsay\n\n### Response:\n")["input_ids"])
    task = build_task(cfg("sft", max_length=n_prompt + 2), tiny_tokenizer)
    data = tokenize_records(task, [long_answer])
    assert data.truncated == 1 and len(data.examples[0]["input_ids"]) == n_prompt + 2
    assert sum(x != IGNORE_INDEX for x in data.examples[0]["labels"]) == 2
    short = build_task(cfg("sft", max_length=n_prompt - 1), tiny_tokenizer)
    with pytest.raises(
        DataError,
        match=rf"t\.jsonl:1: the prompt is {n_prompt} tokens.*"
        rf"max_length={n_prompt - 1}.*overlong=drop",
    ):
        short.encode(long_answer)
    drop = build_task(cfg("sft", max_length=n_prompt + 2, overlong="drop"), tiny_tokenizer)
    data = tokenize_records(drop, [long_answer, rec(instruction="say", output="")])
    assert (data.dropped, data.truncated, len(data.examples)) == (1, 0, 1)


def test_exact_match_scorer(tiny_tokenizer):
    assert exact_matches([" tac\n", "dog", ""], ["tac", "god", ""]) == 2
    task = build_task(cfg("sft", eval_generate=True), tiny_tokenizer)
    stats = {"loss_sum": 2.0, "units": 2.0, "exact_match": 1.0, "generated": 4.0}
    assert task.summarize(stats)["exact_match"] == 25.0


def test_sft_eval_generate_plain_and_peft(tiny_tokenizer, causal_lm):
    from peft import LoraConfig, get_peft_model

    task = build_task(cfg("sft", eval_generate=True, max_new_tokens=4), tiny_tokenizer)
    examples = [task.encode(rec(instruction=t, output="tac"))[0] for t in TEXTS[:2]]
    batch = task.collate(examples)
    assert batch["gen_prompt_ids"].shape[0] == 2
    stats = task.eval_stats(causal_lm, batch)
    assert stats["generated"] == 2.0 and 0 <= stats["exact_match"] <= 2
    assert 0.0 <= task.summarize(stats)["exact_match"] <= 100.0
    peft_model = get_peft_model(
        copy.deepcopy(causal_lm), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    ).eval()
    assert task.eval_stats(peft_model, batch)["generated"] == 2.0
    assert len(task.generate(peft_model, batch)) == 2


# --- classify -------------------------------------------------------------------------------


def test_classify_labels_and_errors(tiny_tokenizer):
    task = build_task(cfg("classify", labels=["neg", "pos"]), tiny_tokenizer)
    assert (task.model_head, task.num_labels) == ("sequence_classification", 2)
    assert task.encode(rec(text="great", label="pos"))[0]["label"] == 1
    assert task.encode(rec(text="awful", label=0))[0]["label"] == 0
    assert task.encode(rec(text="awful", label="1"))[0]["label"] == 1  # CSV gives text
    with pytest.raises(DataError, match=r"d\.csv:4: label 'meh' is not one of task\.labels"):
        task.encode(rec("d.csv:4", text="x", label="meh"))
    with pytest.raises(DataError, match=r"label 2 is not one of.*\['neg', 'pos'\]"):
        task.encode(rec(text="x", label=2))
    with pytest.raises(ConfigError, match=r"set task\.labels"):
        build_task(cfg("classify"), tiny_tokenizer)


def test_classify_loss_matches_transformers(tiny_tokenizer, tiny_llama_dir):
    model = seq_classifier(tiny_llama_dir, num_labels=2)
    task = build_task(cfg("classify", labels=["neg", "pos"]), tiny_tokenizer)
    examples = [task.encode(rec(text=t, label=i % 2))[0] for i, t in enumerate(TEXTS)]
    batch = task.collate(examples)
    assert batch["num_units"].item() == 4
    out = task.loss(model, batch)
    with torch.no_grad():
        reference = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")})
    torch.testing.assert_close(out.loss_sum / 4, reference.loss, rtol=1e-5, atol=1e-5)
    stats = task.eval_stats(model, batch)
    assert stats["tp_0"] + stats["fn_0"] == 2 and stats["correct"] == out.stats["correct"]
    metrics = task.summarize(stats)
    assert 0 <= metrics["accuracy"] <= 100 and 0 <= metrics["macro_f1"] <= 100
    assert task.summarize(out.stats) == pytest.approx(metrics)


def test_macro_f1():
    # Class 0: tp 2, fp 1, fn 0 -> 0.8; class 1: tp 1, fp 0, fn 1 -> 2/3; class 2 absent.
    stats = {"tp_0": 2, "fp_0": 1, "fn_0": 0, "tp_1": 1, "fp_1": 0, "fn_1": 1}
    assert macro_f1(stats, 3) == pytest.approx((0.8 + 2 / 3) / 2)


# --- reward ---------------------------------------------------------------------------------


def test_reward_scores_each_response_once_and_pairs_them_within_the_ranking(tiny_tokenizer):
    task = build_task(cfg("reward"), tiny_tokenizer)
    assert (task.model_head, task.num_labels) == ("sequence_classification", 1)
    (ranking,) = task.encode(rec(prompt="Q", responses=["best", "mid", "worst"]))

    def text(ids):
        return tiny_tokenizer.decode(ids).removeprefix("Q\n\n").removesuffix("</s>")

    # K = 3 sequences, not 2 per pair; the pairs index them, better first.
    assert [text(ids) for ids in ranking["response_ids"]] == ["best", "mid", "worst"]
    assert ranking["pairs"] == [[0, 1], [0, 2], [1, 2]]
    # per_ranking (the default, InstructGPT's): the ranking's pairs share a weight of 1.
    assert ranking["weights"] == pytest.approx([1 / 3] * 3) and ranking["units"] == 1
    per_pair = build_task(cfg("reward", pair_weighting="per_pair"), tiny_tokenizer)
    (flat,) = per_pair.encode(rec(prompt="Q", responses=["best", "mid", "worst"]))
    assert flat["weights"] == [1.0] * 3 and flat["units"] == 3
    (pair,) = task.encode(rec(prompt="Q", chosen="yes", rejected="no"))
    assert [text(ids) for ids in pair["response_ids"]] == ["yes", "no"]
    assert pair["pairs"] == [[0, 1]]
    with pytest.raises(
        DataError, match=r"t\.jsonl:1: field 'responses' must be a list of at least 2"
    ):
        task.encode(rec(prompt="Q", responses=["only"]))
    with pytest.raises(DataError, match=r"missing field 'rejected'.*chosen, rejected"):
        task.encode(rec(prompt="Q", chosen="yes"))


def test_reward_reviewers_are_aggregated_as_configured(tiny_tokenizer):
    record = rec(prompt="Q", responses=["a", "b", "c"], rankings=[[2, 0, 1], [0, 2, 1], [0, 1, 2]])
    # Borda (responses put below, summed over reviewers): a 1 + 2 + 2, c 2 + 1 + 0, b 0 + 0 + 1.
    (consensus,) = build_task(cfg("reward"), tiny_tokenizer).encode(record)
    assert consensus["pairs"] == [[0, 1], [0, 2], [2, 1]] and consensus["units"] == 1
    every = build_task(cfg("reward", aggregate="pairs"), tiny_tokenizer)
    (example,) = every.encode(record)
    assert len(example["response_ids"]) == 3  # still one forward per response
    assert len(example["pairs"]) == 9 and example["units"] == 3
    assert example["pairs"][:3] == [[0, 1], [2, 0], [2, 1]]  # reviewer 0: c > a > b
    # Scores: a tie makes no pair; per_ranking weights the remaining pairs 1/2 each.
    (scored,) = build_task(cfg("reward"), tiny_tokenizer).encode(
        rec(prompt="Q", responses=["a", "b", "c"], scores=[[0.5, 0.5, 0.1]])
    )
    assert scored["pairs"] == [[0, 2], [1, 2]] and scored["weights"] == [0.5, 0.5]
    # Every response tied: nothing to learn, the record is dropped.
    assert (
        build_task(cfg("reward"), tiny_tokenizer).encode(
            rec(prompt="Q", responses=["a", "b"], scores=[[1, 1]])
        )
        == []
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"rankings": [[0, 0, 1]]},
            r"t\.jsonl:1: rankings\[0\] = \[0, 0, 1\] is not a permutation",
        ),
        ({"rankings": [[0, 1, 2], [0, 3, 1]]}, r"rankings\[1\].*index 3 is out of range for 3"),
        ({"rankings": [[0, 1]]}, r"rankings\[0\] = \[0, 1\] is not a permutation of 0\.\.2"),
        ({"scores": [[1, 2, 3], [1, 2]]}, r"scores\[1\] has 2 scores for 3 responses"),
        ({"scores": [["a", "b", "c"]]}, r"field 'scores' must be a list with one list of numbers"),
        ({"rankings": [[0, 1, 2]], "scores": [[1, 2, 3]]}, r"'rankings' or 'scores', not both"),
    ],
)
def test_reward_names_the_record_of_a_bad_ranking(tiny_tokenizer, fields, message):
    task = build_task(cfg("reward"), tiny_tokenizer)
    with pytest.raises(DataError, match=message):
        task.encode(rec(prompt="Q", responses=["a", "b", "c"], **fields))


def test_reward_loss_is_instructgpts_and_trls_on_hand_computed_scores():
    # TRL is not in the environment: its RewardTrainer's loss is written out instead (TRL 1.16,
    # reward_trainer.py: -logsigmoid(rewards_chosen - rewards_rejected).mean(), over pairs).
    # Scores of one ranking of K = 3 (best first), r = [2, 1, -1]: margins 1, 3, 2.
    margins = torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64)
    per_pair = [math.log1p(math.exp(-m)) for m in (1.0, 3.0, 2.0)]
    trl_mean = sum(per_pair) / 3
    # InstructGPT: loss = -1/C(K,2) E[log sigmoid(r_w - r_l)], one ranking = one unit.
    weights = torch.full((3,), 1 / 3, dtype=torch.float64)
    assert ranking_loss_sum(margins, weights).item() == pytest.approx(trl_mean, abs=1e-12)
    # per_pair: weight 1 each, divided by the 3 pairs (units) in the loop: the same mean here;
    # rankings of different K are where the two weightings part.
    ones = torch.ones(3, dtype=torch.float64)
    assert ranking_loss_sum(margins, ones).item() / 3 == pytest.approx(trl_mean, abs=1e-12)
    assert trl_mean == pytest.approx(0.1629257, abs=1e-6)


def test_reward_chat_template_and_truncation(chat_tokenizer):
    long = "The quick brown fox jumps over the lazy dog."
    task = build_task(cfg("reward", max_length=32), chat_tokenizer)
    data = tokenize_records(task, [rec(prompt="Q", chosen=long, rejected="n")])
    (ranking,) = data.examples
    chosen, rejected = ranking["response_ids"]
    assert data.truncated == 1 and len(chosen) == 32
    assert chosen[-1] == chat_tokenizer.eos_token_id
    assert chat_tokenizer.decode(rejected) == "<|user|>\nQ</s>\n<|assistant|>\nn</s>\n</s>"
    drop = build_task(cfg("reward", max_length=32, overlong="drop"), chat_tokenizer)
    assert drop.encode(rec(prompt="Q", chosen=long, rejected="n")) == []


def _unpadded_score(model, ids):  # one sequence, no padding: what pooling must reproduce
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, 0]


@pytest.mark.parametrize("weighting", ["per_ranking", "per_pair"])
def test_reward_loss_matches_unpadded_scores(tiny_tokenizer, tiny_llama_dir, weighting):
    model = seq_classifier(tiny_llama_dir, num_labels=1)
    task = build_task(cfg("reward", pair_weighting=weighting), tiny_tokenizer)
    rankings = [
        *task.encode(rec(prompt="Score", responses=["great, loved it", "ok", "awful"])),
        *task.encode(rec(prompt="Two", chosen="yes", rejected="no thanks")),
    ]
    batch = task.collate(rankings)
    # 3 + 2 sequences forwarded, not 2 × (3 + 1) = 8 as with both sides of every pair.
    assert batch["input_ids"].shape[0] == 5
    out = task.loss(model, batch)
    scores = [[_unpadded_score(model, ids) for ids in r["response_ids"]] for r in rankings]
    losses = [
        [-torch.nn.functional.logsigmoid(s[b] - s[w]) for b, w in r["pairs"]]
        for r, s in zip(rankings, scores, strict=True)
    ]
    if weighting == "per_ranking":  # the mean over each ranking's pairs, summed over rankings
        expected, units = sum(sum(x) / len(x) for x in losses), 2
    else:
        expected, units = sum(sum(x) for x in losses), 4
    assert batch["num_units"].item() == units
    torch.testing.assert_close(out.loss_sum, expected, rtol=1e-4, atol=1e-5)
    metrics = task.summarize(task.eval_stats(model, batch))
    assert set(metrics) == {"loss", "accuracy", "margin"}
    assert task.summarize(out.stats) == pytest.approx(metrics, rel=1e-5)
    assert metrics["loss"] == pytest.approx(expected.item() / units, rel=1e-4)
    margins = [s[b] - s[w] for r, s in zip(rankings, scores, strict=True) for b, w in r["pairs"]]
    assert metrics["accuracy"] == pytest.approx(100 * sum(m > 0 for m in margins).item() / 4)


def test_reward_loss_equals_the_pairwise_loss_of_both_sides(tiny_tokenizer, tiny_llama_dir):
    # One forward per response changes how many sequences run, not the loss: per_pair equals the
    # sum bigft computed before by forwarding the two sides of every pair.
    model = seq_classifier(tiny_llama_dir, num_labels=1)
    task = build_task(cfg("reward", pair_weighting="per_pair"), tiny_tokenizer)
    (ranking,) = task.encode(rec(prompt="P", responses=["a b c", "d", "e f", "g h i j"]))
    seqs = ranking["response_ids"]
    sides = [[seqs[b] for b, _ in ranking["pairs"]], [seqs[w] for _, w in ranking["pairs"]]]
    both = collate_sequences(sides[0] + sides[1], tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        rewards = forward_logits(model, both).squeeze(-1)
        old = -torch.nn.functional.logsigmoid(rewards[:6] - rewards[6:]).sum()
        new = task.loss(model, task.collate([ranking])).loss_sum
    assert both["input_ids"].shape[0] == 12 and len(seqs) == 4
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-5)


def test_reward_reviewer_agreement_is_logged_at_start_up(tiny_tokenizer, caplog):
    task = build_task(cfg("reward"), tiny_tokenizer)
    records = [rec(prompt="Q", responses=["a", "b", "c"], rankings=[[0, 1, 2], [0, 2, 1]])]
    with caplog.at_level("INFO"):
        task.describe_records(records, "train")
    # Two reviewers agree on 2 of the 3 pairs.
    assert "train: reviewer agreement 66.7%" in caplog.text
    assert "(1 records with 2.0 reviewers each, 3 comparisons)" in caplog.text


# --- tokenizing and caching -----------------------------------------------------------------


def test_tokenize_cache_round_trip(tmp_path, tiny_tokenizer):
    task = build_task(cfg("lm", max_length=4), tiny_tokenizer)
    records = [rec(text=t) for t in TEXTS]
    key = cache_key(records, "tok", {"max_length": 4})
    assert key != cache_key([rec(text="other")], "tok", {"max_length": 4})
    path = tmp_path / f"{key}.json"
    first = tokenize_records(task, records, cache_path=path)
    assert path.exists() and not list(tmp_path.glob(".*.tmp"))
    # The cache is used as is: an empty record list proves nothing was re-encoded.
    assert tokenize_records(task, [], cache_path=path) == first


def test_build_task_rejects_unknown_names(tiny_tokenizer):
    class Fake:
        name = "sac"

    with pytest.raises(ConfigError, match="unknown task 'sac'"):
        build_task(Fake(), tiny_tokenizer)


def test_causal_loss_projects_only_target_positions_and_equals_the_full_loss(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from bigft.tasks.lm import causal_loss_sum

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    ids = torch.randint(5, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padding
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt
    labels[1, :2] = -100
    labels[1, 7:] = -100
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    seen = []
    model.lm_head.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    loss = causal_loss_sum(model, batch)

    logits = model(input_ids=ids, attention_mask=mask).logits
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum"
    )
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    targets = int((labels[:, 1:] != -100).sum())
    assert seen[0] == (targets, model.config.hidden_size)  # 9 of 18 positions reach lm_head
