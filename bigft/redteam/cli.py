"""`bigft-redteam target=<run> attacks.files=[attacks.jsonl]`: scan, report, export.

Also `bigft-redteam garak_report=report.jsonl export.enabled=true` (a garak scan's findings) and
`labels=<filled-in review.jsonl|csv>` (people's verdicts over the judges'). Writes to output_dir:
findings.jsonl, asr.json, report.md, asr.png, and with export.enabled=true export/*.jsonl.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from bigft.config import CONF_DIR, typed_config
from bigft.errors import exit_on_user_error, run_hydra_app
from bigft.redteam.config import RedteamConfig
from bigft.redteam.export import write_export
from bigft.redteam.findings import (
    FINDINGS_FILE,
    append_findings,
    asr_table,
    markdown_report,
    read_findings,
    top_attacks,
    write_chart,
)
from bigft.redteam.garak import read_garak_report
from bigft.redteam.judges import success
from bigft.redteam.review import apply_labels, read_labels, write_review

log = logging.getLogger("bigft")


def _garak_findings(cfg: DictConfig, out_dir: Path) -> list[dict[str, Any]]:
    findings = read_garak_report(cfg.garak_report, threshold=cfg.garak_threshold)
    path = out_dir / FINDINGS_FILE
    known = {f["id"] for f in read_findings(path)}
    append_findings(path, [f for f in findings if f["id"] not in known])
    return findings


def report(
    findings: list[dict[str, Any]], cfg: DictConfig, out_dir: Path, speed: dict[str, float]
) -> dict[str, Any]:
    rows = asr_table(findings, seed=cfg.seed)
    top = top_attacks(findings, cfg.top_k)
    (out_dir / "report.md").write_text(markdown_report(rows, top, "Red-team scan"))
    chart = write_chart(rows, out_dir / "asr.png")
    overall = rows[0] if rows else {"asr": 0.0, "low": 0.0, "high": 0.0, "attacks": 0}
    summary = {
        "asr": overall["asr"],
        "asr_low": overall["low"],
        "asr_high": overall["high"],
        "attacks": overall["attacks"],
        "responses": len(findings),
        **speed,
        "rows": rows,
    }
    (out_dir / "asr.json").write_text(json.dumps(summary, indent=2) + "\n")
    if cfg.logger.name == "wandb":
        _log_wandb(cfg, out_dir, rows, findings, chart, summary)
    return summary


def _log_wandb(
    cfg: DictConfig,
    out_dir: Path,
    rows: list[dict[str, Any]],
    findings: list[dict[str, Any]],
    chart: Path | None,
    summary: dict,
) -> None:
    import wandb

    from bigft.tracking import Tracker, wandb_mode

    run = wandb.init(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group,
        tags=list(cfg.logger.tags),
        job_type=cfg.logger.job_type or "redteam",
        dir=str(out_dir),
        mode=wandb_mode(cfg.logger),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    tracker = Tracker(None, run)
    tracker.table("redteam/asr", rows, step=0)
    found = [
        {"attack_id": f["attack"]["id"]}
        | {k: f["attack"][k] for k in ("source", "category", "family", "prompt")}
        | {"response": f["response"], "success": f["success"]}
        for f in findings
    ]
    tracker.table("redteam/findings", found, step=0)
    if chart is not None:
        run.log({"redteam/asr_chart": wandb.Image(str(chart))}, step=0)
    tracker.summary({f"redteam/{k}": v for k, v in summary.items() if k != "rows"})
    tracker.finish()


def run_redteam(cfg: DictConfig, after_batch: Callable[[], None] | None = None) -> dict[str, Any]:
    """The whole command: findings (a scan, or a garak report), labels, report, exports.

    `after_batch` runs after each batch of findings is appended (see `scan_attacks`)."""
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    speed: dict[str, float] = {}
    if cfg.garak_report:
        findings = _garak_findings(cfg, out_dir)
    else:
        from bigft.redteam.scan import scan  # torch and transformers: only when scanning

        findings, speed = scan(cfg, out_dir, after_batch)
    if cfg.labels:
        count = apply_labels(
            findings,
            read_labels(cfg.labels, findings),
            lambda judged: success(judged, cfg.judges.combine),
        )
        log.info("people's verdicts on %d findings from %s", count, cfg.labels)
    summary = report(findings, cfg, out_dir, speed)
    if cfg.export_for_review:
        for path in write_review(findings, out_dir):
            log.info("review file: %s", path)
    if cfg.export.enabled:
        summary["export"] = write_export(findings, out_dir, cfg.export)
    return summary


def print_summary(summary: dict[str, Any], out_dir: str) -> None:
    print(
        f"ASR {summary['asr']:.1%} (95% CI {summary['asr_low']:.1%}–{summary['asr_high']:.1%}) "
        f"over {summary['attacks']} attacks, {summary['responses']} responses",
        flush=True,
    )
    if summary.get("responses_per_second"):
        print(f"scan speed: {summary['responses_per_second']:.2f} responses judged/s", flush=True)
    if "export" in summary:
        print(f"export: {summary['export']} in {out_dir}/export", flush=True)
    print(f"report: {out_dir}/report.md", flush=True)


@hydra.main(config_path=str(CONF_DIR), config_name="redteam", version_base="1.3")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    cfg = typed_config(cfg, RedteamConfig)
    if cfg.launcher.name == "slurm":
        from bigft.redteam.slurm import submit_scan

        submit_scan(cfg)
        return
    print_summary(run_redteam(cfg), cfg.output_dir)


def main() -> None:
    run_hydra_app(_hydra_main)


if __name__ == "__main__":
    main()
