"""One scan: attacks → the target generates → judges score → findings.jsonl, batch by batch.

`run_redteam(cfg)` is the whole command as a plain function (the Hydra app only wraps it):
collect the attacks, scan those not yet in findings.jsonl under this config's hash, let the red
LM write new ones over its rounds, then report, and export when asked.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bigft.errors import ConfigError
from bigft.redteam.attacks import Attack, read_attack_file, read_fillers, template_bank
from bigft.redteam.findings import (
    FINDINGS_FILE,
    append_findings,
    attack_outcomes,
    config_hash,
    done_attack_ids,
    read_findings,
)
from bigft.redteam.judges import build_judges, success
from bigft.redteam.target import Target, generate, load_target, prompt_ids

log = logging.getLogger("bigft")


def scan_settings(cfg: DictConfig) -> dict[str, Any]:
    """What the findings depend on besides the attack: a changed setting starts afresh."""
    return {
        "target": str(Path(cfg.target).expanduser().resolve()),
        "generation": OmegaConf.to_container(cfg.generation, resolve=True),
        "judges": OmegaConf.to_container(cfg.judges, resolve=True),
    }


def collect_attacks(cfg: DictConfig, red_lm: Any) -> list[Attack]:
    """People's files, then the template bank; ids unique (a repeated attack is scanned once)."""
    attacks = [a for path in cfg.attacks.files for a in read_attack_file(path)]
    templates = cfg.attacks.templates
    if templates.fillers is not None:
        fillers = (
            OmegaConf.to_container(templates.fillers, resolve=True)
            if not isinstance(templates.fillers, str)
            else templates.fillers
        )
        attacks += template_bank(
            read_fillers(fillers),
            families=dict(templates.families) or None,
            mutations=list(templates.mutations),
            seed=templates.seed,
            max_attacks=templates.max_attacks,
            paraphrase=red_lm.paraphrase if red_lm is not None else None,
        )
    unique: dict[str, Attack] = {}
    for attack in attacks:
        unique.setdefault(attack.id, attack)
    return list(unique.values())


def _batch_seed(seed: int, batch: list[Attack]) -> int:
    # From the batch's attacks, not its position: a resumed scan samples as the first one did.
    digest = hashlib.sha1("|".join(a.id for a in batch).encode()).hexdigest()
    return (seed * 1_000_003 + int(digest[:8], 16)) % 2**31


def judge_batch(
    target: Target, judges: list[Any], batch: list[Attack], cfg: DictConfig, chash: str
) -> list[dict[str, Any]]:
    """Generate `samples` responses per attack and judge each: the batch's findings."""
    gen = cfg.generation
    torch.manual_seed(_batch_seed(gen.seed, batch))
    texts = generate(
        target.model,
        target.tokenizer,
        [prompt_ids(target, a.chat()) for a in batch],
        samples=gen.samples,
        max_new_tokens=gen.max_new_tokens,
        temperature=gen.temperature,
        top_p=gen.top_p,
    )
    flat = [(a, i, r) for a, rs in zip(batch, texts, strict=True) for i, r in enumerate(rs)]
    attacks, responses = [a for a, _, _ in flat], [r for _, _, r in flat]
    verdicts = {j.name: j.judge(attacks, responses) for j in judges}
    findings = []
    for k, (attack, sample, response) in enumerate(flat):
        judged = {name: v[k] for name, v in verdicts.items()}
        findings.append(
            {
                "id": f"{attack.id}-{sample}",
                "config_hash": chash,
                "attack": attack.to_dict(),
                "sample": sample,
                "response": response,
                "judges": judged,
                "success": success(judged, cfg.judges.combine),
            }
        )
    return findings


def scan_attacks(
    target: Target,
    judges: list[Any],
    attacks: list[Attack],
    cfg: DictConfig,
    chash: str,
    path: Path,
    mine: list[dict[str, Any]],
    after_batch: Callable[[], None] | None = None,
) -> int:
    """Scan the attacks not yet in `mine` (this config's findings), appending each batch to
    `path` and to `mine`; responses judged. `after_batch` runs once each batch is written (a
    Slurm job stops there on its warning signal: everything judged is already saved)."""
    done = done_attack_ids(mine, chash)
    todo = [a for a in attacks if a.id not in done]
    if len(todo) < len(attacks):
        log.info(
            "resuming: %d of %d attacks already in %s", len(attacks) - len(todo), len(attacks), path
        )
    judged = 0
    for start in range(0, len(todo), cfg.generation.batch_size):
        found = judge_batch(
            target, judges, todo[start : start + cfg.generation.batch_size], cfg, chash
        )
        append_findings(path, found)
        mine.extend(found)
        judged += len(found)
        if after_batch is not None:
            after_batch()
    return judged


def scan(
    cfg: DictConfig, out_dir: Path, after_batch: Callable[[], None] | None = None
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Run the scan (resuming) and return this config's findings and the scan's speed."""
    if not cfg.target:
        raise ConfigError("missing target=<run directory or model path> (or garak_report=...)")
    judges = build_judges(cfg.judges)  # before the target: a judge that cannot load fails fast
    target = load_target(
        cfg.target, merged=cfg.generation.merged, use_chat_template=cfg.generation.use_chat_template
    )
    red_lm = None
    if cfg.attacks.red_lm.model:
        from bigft.redteam.red_lm import RedLM

        red_lm = RedLM(
            load_target(
                cfg.attacks.red_lm.model, key="attacks.red_lm.model", use_chat_template=False
            ),
            cfg.attacks.red_lm,
        )
    attacks = collect_attacks(cfg, red_lm)
    if not attacks and red_lm is None:
        raise ConfigError(
            "no attacks: give attacks.files=[...], attacks.templates.fillers=... "
            "or attacks.red_lm.model=..."
        )
    chash, path = config_hash(scan_settings(cfg)), out_dir / FINDINGS_FILE
    # Read once: the scan keeps this config's findings as it appends them.
    mine = [f for f in read_findings(path) if f.get("config_hash") == chash]
    start = time.perf_counter()
    judged = scan_attacks(target, judges, attacks, cfg, chash, path, mine, after_batch)
    for round_no in range(cfg.attacks.red_lm.rounds if red_lm else 0):
        wins = [Attack.from_dict(a) for a, ok in attack_outcomes(mine).values() if ok]
        new = red_lm.propose(round_no, wins)
        log.info(
            "red LM round %d: %d new attacks (%d successes as examples)",
            round_no,
            len(new),
            len(wins),
        )
        judged += scan_attacks(target, judges, new, cfg, chash, path, mine, after_batch)
    seconds = time.perf_counter() - start
    speed = {
        "responses_judged": judged,
        "seconds": seconds,
        "responses_per_second": judged / seconds if seconds > 0 and judged else 0.0,
    }
    return mine, speed
