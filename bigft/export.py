"""`bigft-export run=outputs/<run>`: merge a run's LoRA/QLoRA adapter into a standalone HF model.

Reads `<run>/model` (written by training) and writes `<run>/merged` (or `output=...`): config,
safetensors weights and tokenizer, loadable with `AutoModelForCausalLM.from_pretrained` alone.

QLoRA adapters were trained against the 4-bit weights, so they are merged into the dequantized
4-bit base (see bigft.outputs._dequantized_base): the merged model reproduces the adapter on the
quantized base, not the adapter on the original full-precision base.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import MISSING, DictConfig

from bigft.config import CONF_DIR, typed_config
from bigft.config.schema import DType
from bigft.errors import ConfigError, exit_on_user_error, run_hydra_app
from bigft.outputs import MERGED_SUBDIR, read_metadata
from bigft.run_dirs import merge_into, output_dir_of

log = logging.getLogger("bigft")


@dataclass
class ExportConfig:
    run: str = MISSING  # a run directory holding model/ (or such a model/ directory itself)
    output: str = f"${{run}}/{MERGED_SUBDIR}"
    dtype: DType | None = None  # None: the dtype the base was trained in


def export_merged(run_dir: Path | str, output_dir: Path | str, dtype: str | None = None) -> Path:
    """Merge the adapter in `<run_dir>/model` into its base; write a HF model to `output_dir`."""
    source = output_dir_of(Path(run_dir))
    meta = read_metadata(source)
    if meta["kind"] != "adapter":
        raise ConfigError(
            f"{source} holds a full model (method={meta['method']}): there is nothing to merge; "
            "load it directly with from_pretrained (or pass the run as model.path)"
        )
    return merge_into(source, Path(output_dir), dtype)


@hydra.main(config_path=str(CONF_DIR), config_name="export", version_base="1.3")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    cfg = typed_config(cfg, ExportConfig)
    out = export_merged(cfg.run, cfg.output, cfg.dtype)
    print(f"merged model written to {out}", flush=True)


def main() -> None:
    run_hydra_app(_hydra_main)


if __name__ == "__main__":
    main()
