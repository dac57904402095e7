"""Data: reading records, chat/instruction templates, tokenizing with a cache, padding."""

from bigft.data.collate import IGNORE_INDEX, collate_causal, collate_sequences, pad_left, pad_right
from bigft.data.readers import Record, read_records, split_train_eval
from bigft.data.tokenize import TokenizedData, cache_key, tokenize_records, tokenizer_fingerprint

__all__ = [
    "IGNORE_INDEX",
    "Record",
    "TokenizedData",
    "cache_key",
    "collate_causal",
    "collate_sequences",
    "pad_left",
    "pad_right",
    "read_records",
    "split_train_eval",
    "tokenize_records",
    "tokenizer_fingerprint",
]
