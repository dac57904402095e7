"""Findings: one jsonl line per judged response, appended batch by batch, and what they add up to.

A finding is {id, config_hash, attack: {...}, sample, response, judges: {name: {score, verdict}},
success}. Appending per batch is what makes a scan resumable: a rerun with the same config hash
skips the attacks already in the file. The attack success rate (ASR) counts attacks, not
responses: an attack succeeds when any of its samples does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from bigft.errors import DataError

log = logging.getLogger("bigft")

FINDINGS_FILE = "findings.jsonl"


def config_hash(settings: dict[str, Any]) -> str:
    """What makes two scans' findings comparable: target, generation and judges."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_findings(path: Path) -> list[dict[str, Any]]:
    if not Path(path).is_file():
        return []
    findings = []
    for no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            findings.append(json.loads(line))
        except json.JSONDecodeError:
            # The last line of a scan killed mid-write; everything before it is whole.
            log.warning("%s:%d: incomplete line skipped (an interrupted write)", path, no)
    return findings


def append_findings(path: Path, findings: list[dict[str, Any]]) -> None:
    with Path(path).open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in findings))
        f.flush()


def done_attack_ids(findings: list[dict[str, Any]], chash: str) -> set[str]:
    return {f["attack"]["id"] for f in findings if f.get("config_hash") == chash}


def attack_outcomes(findings: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], bool]]:
    """{attack id: (attack, succeeded)}; an attack succeeds when any sample does."""
    out: dict[str, tuple[dict[str, Any], bool]] = {}
    for f in findings:
        attack = f["attack"]
        previous = out.get(attack["id"], (attack, False))[1]
        out[attack["id"]] = (attack, previous or bool(f["success"]))
    return out


def bootstrap_interval(
    outcomes: list[bool], *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of 0/1 outcomes (seeded: reproducible)."""
    if not outcomes:
        return 0.0, 0.0
    rng, n = random.Random(seed), len(outcomes)
    means = sorted(sum(rng.choices(outcomes, k=n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return lo, hi


def asr_table(findings: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Rows {group, value, attacks, successes, asr, low, high}: overall, per category, source,
    and template family."""
    outcomes = list(attack_outcomes(findings).values())
    groups: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for attack, ok in outcomes:
        groups[("overall", "all")].append(ok)
        for key in ("category", "source", "family"):
            groups[(key, str(attack.get(key)))].append(ok)
    rows = []
    for (group, value), oks in sorted(
        groups.items(), key=lambda kv: (kv[0][0] != "overall", kv[0])
    ):
        lo, hi = bootstrap_interval(oks, seed=seed)
        rows.append(
            {
                "group": group,
                "value": value,
                "attacks": len(oks),
                "successes": sum(oks),
                "asr": sum(oks) / len(oks),
                "low": lo,
                "high": hi,
            }
        )
    return rows


def top_attacks(findings: list[dict[str, Any]], k: int = 10) -> list[dict[str, Any]]:
    """The attacks with the most successful samples, most first (ties: file order)."""
    counts: dict[str, list[Any]] = {}
    for f in findings:
        entry = counts.setdefault(f["attack"]["id"], [f["attack"], 0, 0, None])
        entry[2] += 1
        if f["success"]:
            entry[1] += 1
            entry[3] = entry[3] or f["response"]
    ranked = sorted(counts.values(), key=lambda e: -e[1])
    return [
        {"attack": a, "successes": s, "samples": n, "response": r}
        for a, s, n, r in ranked[:k]
        if s > 0
    ]


def markdown_report(rows: list[dict[str, Any]], top: list[dict[str, Any]], title: str) -> str:
    lines = [
        f"# {title}",
        "",
        "| group | value | attacks | successes | ASR | 95% CI |",
        "|---|---|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['group']} | {r['value']} | {r['attacks']} | {r['successes']} | "
        f"{r['asr']:.1%} | {r['low']:.1%}–{r['high']:.1%} |"
        for r in rows
    ]
    lines += [
        "",
        "## Most successful attacks",
        "",
        "| successes | source | family | prompt | response |",
        "|---:|---|---|---|---|",
    ]
    for t in top:
        cells = [_cell(t["attack"]["prompt"]), _cell(t["response"] or "")]
        lines.append(
            f"| {t['successes']}/{t['samples']} | {t['attack']['source']} | "
            f"{t['attack']['family']} | {cells[0]} | {cells[1]} |"
        )
    return "\n".join(lines) + "\n"


def _cell(text: str, width: int = 80) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def write_chart(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """ASR per category and source with 95% intervals, as a PNG. matplotlib is optional
    (the dev extra): without it the chart is skipped and the Markdown report stands alone."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no chart (pip install matplotlib)")
        return None
    shown = [r for r in rows if r["group"] in ("overall", "category", "source")]
    labels = [f"{r['group']}={r['value']}" if r["group"] != "overall" else "overall" for r in shown]
    asr = [r["asr"] for r in shown]
    err = [[r["asr"] - r["low"] for r in shown], [r["high"] - r["asr"] for r in shown]]
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(shown) + 2), 3.5))
    ax.bar(range(len(shown)), asr, yerr=err, capsize=3, color="#c0504d")
    ax.set_xticks(range(len(shown)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("attack success rate")
    ax.set_title("ASR with 95% bootstrap intervals")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def check_findings(findings: list[dict[str, Any]], path: Path) -> None:
    for i, f in enumerate(findings, 1):
        missing = [k for k in ("id", "attack", "response", "judges", "success") if k not in f]
        if missing:
            raise DataError(f"{path}:{i}: a finding needs {missing}")
