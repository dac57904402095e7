"""Models: loading from a local directory or a hub id (optionally 4-/8-bit), and the toy model."""

from bigft.models.load import load_model, load_tokenizer, resolve_source, torch_dtype

__all__ = ["load_model", "load_tokenizer", "resolve_source", "torch_dtype"]
