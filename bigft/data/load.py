"""From the data config to tokenized train and eval examples (read → split → tokenize, cached)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bigft.data.packing import fill_ratio, pack_examples
from bigft.data.readers import Record, read_records, split_train_eval
from bigft.data.tokenize import TokenizedData, cache_key, tokenize_records, tokenizer_fingerprint
from bigft.tasks.base import Task

log = logging.getLogger(__name__)


def _read(cfg: DictConfig, spec: str, split: str, limit: int | None) -> list[Record]:
    records = read_records(
        spec,
        subset=cfg.data.subset,
        split=split,
        fields=OmegaConf.to_container(cfg.data.fields) or None,
    )
    return records[:limit] if limit else records


def _tokenize(cfg: DictConfig, task: Task, tokenizer, records: list[Record], part: str):
    cache_path = None
    if cfg.data.cache:
        key = cache_key(
            [r.fields for r in records],
            OmegaConf.to_container(cfg.task, resolve=True),
            tokenizer_fingerprint(tokenizer),
        )
        cache_path = Path(cfg.cache_dir) / "tokenized" / f"{part}-{key}.json"
    data: TokenizedData = tokenize_records(task, records, cache_path=cache_path)
    log.info(
        "%s: %d records → %d examples (%d truncated, %d dropped as over-long)",
        part,
        len(records),
        len(data.examples),
        data.truncated,
        data.dropped,
    )
    return data.examples


def load_examples(cfg: DictConfig, task: Task, tokenizer) -> tuple[list[dict], list[dict]]:
    """Train and eval examples for `task`; eval comes from data.eval or a seeded split."""
    data = cfg.data
    train = _read(cfg, data.train, data.train_split, data.max_train_examples)
    if data.eval:
        split = data.eval_split or data.train_split
        evaluation = _read(cfg, data.eval, split, data.max_eval_examples)
    elif data.eval_fraction > 0:
        train, evaluation = split_train_eval(train, data.eval_fraction, cfg.trainer.seed)
        evaluation = evaluation[: data.max_eval_examples] if data.max_eval_examples else evaluation
    else:
        evaluation = []
    describe = getattr(task, "describe_records", None)  # e.g. reward: reviewers' agreement
    if describe is not None:
        describe(train, "train")
    train_examples = _tokenize(cfg, task, tokenizer, train, "train")
    eval_examples = _tokenize(cfg, task, tokenizer, evaluation, "eval") if evaluation else []
    if cfg.task.packing:
        train_examples = _pack(cfg, train_examples)
    return train_examples, eval_examples


def _pack(cfg: DictConfig, examples: list[dict]) -> list[dict]:
    """Training rows of packed examples. Evaluation stays unpacked: its loss would be the same
    (packing changes no example's logits), its batches are small, and generation-based metrics
    need one prompt per example."""
    rows = pack_examples(examples, cfg.task.max_length, cfg.trainer.seed)
    log.info(
        "packing: %d examples → %d rows of ≤%d tokens (%.1f%% filled)",
        len(examples),
        len(rows),
        cfg.task.max_length,
        100 * fill_ratio(rows, cfg.task.max_length),
    )
    return rows
