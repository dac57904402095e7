"""A run directory is a model: the one test of what a user-given model path is, and the model
directory a new run starts from when that path is a run.

Every key that reads a model (model.path, reward.model, task.reference, bigft-redteam target,
the judges, bigft-export/generate run=) asks `finished_output` whether the path is a bigft run's
finished output (`<run>`, `<run>/model`, `<run>/merged`, or any directory with bigft_output.json)
or a plain Hugging Face directory / hub id. A run that has not finished is refused by name.

Training from a run (`model.path=<run>`): a full model is loaded as it was saved; an adapter is
merged into its base (qlora: into the dequantized 4-bit base, as bigft-export does) and written
once to the new run's `base/`, which the new run then loads like any model directory. Writing
it, rather than merging in memory, lets the ordinary load path do what only it can: ZeRO-3 builds
the model already partitioned from a directory, and a qlora run quantizes while loading.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bigft.errors import ConfigError
from bigft.outputs import (
    MERGED_SUBDIR,
    MODEL_SUBDIR,
    OUTPUT_FILE,
    load_output,
    read_metadata,
    write_output_dir,
)

log = logging.getLogger(__name__)

# What a run directory holds from its first step (bigft.engine.resume, .checkpoint, .tracking).
RUN_FILES = ("config.yaml", "checkpoints", "metrics.jsonl")
# Where a run that starts from another run's adapter keeps the merged model it trains on.
BASE_SUBDIR = "base"


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def finished_output(source: str | Path, *, key: str) -> Path | None:
    """The bigft output directory `source` names, or None for a plain model directory / hub id.

    `key` names the config key in the error for a run that has not finished.
    """
    path = Path(str(source)).expanduser()
    if (path / OUTPUT_FILE).is_file():
        return path
    if (path / MODEL_SUBDIR / OUTPUT_FILE).is_file():
        return path / MODEL_SUBDIR
    if is_run_dir(path):
        raise unfinished_run(path, key, source)
    if path.name in (MODEL_SUBDIR, MERGED_SUBDIR) and is_run_dir(path.parent):
        raise unfinished_run(path.parent, key, source)
    return None


def output_dir_of(source: str | Path, *, key: str = "run") -> Path:
    """The bigft output directory `source` names (`<run>/model`, or `source` itself when it is
    one), for a key that takes only a bigft run (bigft-export/generate run=, the judges)."""
    found = finished_output(source, key=key)
    if found is not None:
        return found
    if not Path(str(source)).expanduser().is_dir():
        raise ConfigError(f"{key}={str(source)!r} does not exist")
    raise ConfigError(
        f"{key}={str(source)!r} is not a bigft run directory (no {MODEL_SUBDIR}/{OUTPUT_FILE})"
    )


def unfinished_run(run_dir: Path, key: str, source: str | Path) -> ConfigError:
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        how = f"It has checkpoints: {_resume_command(run_dir)} resumes it"
    else:
        how = "It has no checkpoint either: it stopped before its first save, or is still running"
    return ConfigError(
        f"{key}={str(source)!r} is a bigft run directory that has not finished: {run_dir} has no "
        f"{MODEL_SUBDIR}/{OUTPUT_FILE}, which a run writes when it finishes. {how} (a run with "
        "trainer.save_model=false writes no model)"
    )


def _resume_command(run_dir: Path) -> str:
    """The command that started the run (Hydra keeps its overrides), which resumes it."""
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        words = [str(w) for w in OmegaConf.to_container(OmegaConf.load(overrides)) or []]
        return "`" + " ".join(["bigft-train", *map(shlex.quote, words)]) + "`"
    return "rerunning the bigft-train command that started it"


def _causal_check(meta: dict[str, Any], head: str, key: str, source: str) -> None:
    if meta["head"] == "sequence_classification" and head == "causal_lm":
        raise ConfigError(
            f"{key}={source!r} holds a sequence-classification model (a classify or reward run); "
            "this task trains a causal LM: start it from a causal-LM run or model"
        )


def check_starting_run(source: str, head: str) -> tuple[Path, dict[str, Any]] | None:
    """A finished run as model.path: its output directory and metadata, or None for a plain model
    directory / hub id. Refuses what no task can start from: a classifier for a causal-LM task, or
    a prefix-tuning run (nothing to merge). No weights are read, so `bigft-train launcher=slurm`
    checks it on the submitting host, not the job's rank 0."""
    output = finished_output(source, key="model.path")
    if output is None:
        return None
    meta = read_metadata(output)
    _causal_check(meta, head, "model.path", source)
    if meta["kind"] == "adapter" and meta["method"] == "prefix":
        raise ConfigError(
            f"model.path={source!r} is a prefix-tuning run: its prefixes are extra keys and "
            "values, not a change to any weight, so they cannot be merged into a model to "
            "train on; start from its base (model.path=" + str(meta["base"]) + ")"
        )
    return output, meta


def starting_model(
    model_cfg: DictConfig, run_dir: Path, *, head: str, is_main: bool = True
) -> DictConfig:
    """`model_cfg` with `path` (and an unset `tokenizer`) at a Hugging Face model directory.

    A plain directory or hub id is returned unchanged. For a run's adapter, the main process
    writes the merged model to `<run_dir>/base` (kept when it is already the merge of the same
    output, e.g. on resume); other ranks must wait for it (a barrier) before loading.
    """
    run = check_starting_run(str(model_cfg.path), head)
    if run is None:
        return model_cfg
    output, meta = run
    if meta["kind"] == "adapter":
        base = Path(run_dir) / BASE_SUBDIR
        if is_main and not _is_merge_of(base, output):
            merge_into(output, base)
        output = base
    resolved = OmegaConf.merge(model_cfg, {"path": str(output.resolve())})
    if not model_cfg.tokenizer:
        resolved.tokenizer = str(output.resolve())
    return resolved


def _is_merge_of(base: Path, output: Path) -> bool:
    if not (base / OUTPUT_FILE).is_file():
        return False
    meta = read_metadata(base)
    written = (output / OUTPUT_FILE).stat().st_mtime_ns
    return (
        meta.get("merged_from") == str(output.resolve()) and meta.get("source_written") == written
    )


def merge_into(output: Path, dest: Path, dtype: str | None = None) -> Path:
    """Merge the adapter in `output` into its base; write a Hugging Face model to `dest`."""
    meta = read_metadata(output)
    model, tokenizer = load_output(output, merged=True, dtype=dtype)
    merged_meta = {
        **meta,
        "kind": "model",
        "merged_from": str(output.resolve()),
        # The source's bigft_output.json time: a rerun of that run makes this merge stale.
        "source_written": (output / OUTPUT_FILE).stat().st_mtime_ns,
        "dtype": str(dtype) if dtype else meta["dtype"],
        "quantization": None,
    }

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    out = write_output_dir(dest, write, merged_meta)
    log.info("merged the %s adapter of %s into %s", meta["method"], output, out)
    return out


def config_dir(source: str, *, key: str = "model.path") -> Path | None:
    """The directory holding the model's config.json: a run's model, or an adapter's base (a run
    trained on another run's merge names that merge as its base). None when not a run."""
    output = finished_output(source, key=key)
    if output is None:
        return None
    meta = read_metadata(output)
    if meta["kind"] == "model":
        return output
    base = str(meta["base"])
    return config_dir(base, key=key) or Path(base).expanduser()
