"""A garak scan's report.jsonl as bigft findings, so that its hits export like a bigft scan's.

garak (github.com/NVIDIA/garak) writes one JSON object per line; those with `"entry_type":
"attempt"` and `"status": 2` (evaluated) hold one probe prompt, the target's `outputs` (one per
generation) and `detector_results` ({detector: [score per output]}, 1.0 = the failure the
detector looks for). As garak's own evaluator does, a score at or above `threshold` (0.5) is a
hit. The prompt is a string in older reports and {"turns": [{"role", "content": {"text"}}]} in
newer ones; outputs are strings or {"text": ...}. garak is not imported: only its file format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bigft.errors import DataError
from bigft.redteam.attacks import GARAK, Attack
from bigft.redteam.judges import HARMFUL, SAFE

EVALUATED = 2


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if isinstance(value.get("text"), str):
            return value["text"]
        return _text(value.get("content"))
    return None


def _chat(prompt: Any, where: str) -> list[dict[str, str]]:
    if isinstance(prompt, dict) and isinstance(prompt.get("turns"), list):
        chat = [
            {"role": str(t.get("role", "user")), "content": _text(t.get("content")) or ""}
            for t in prompt["turns"]
        ]
    elif (text := _text(prompt)) is not None:
        chat = [{"role": "user", "content": text}]
    else:
        raise DataError(f"{where}: an attempt's 'prompt' has no text")
    if not chat or chat[-1]["role"] != "user":
        raise DataError(f"{where}: an attempt's prompt must end with a user turn")
    return chat


def _flat(scores: Any) -> list[float | None]:
    # Newer garak nests one list per turn; a None is an output the detector skipped.
    out: list[float | None] = []
    for s in scores if isinstance(scores, list) else [scores]:
        out.extend(_flat(s) if isinstance(s, list) else [None if s is None else float(s)])
    return out


def read_garak_report(
    path: str, *, threshold: float = 0.5, config_hash: str = "garak"
) -> list[dict[str, Any]]:
    """Findings (bigft.redteam.findings' format), one per evaluated output of each attempt."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"garak_report={path}: no such file")
    findings = []
    for no, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{path}:{no}"
        try:
            entry = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: invalid JSON ({err.msg})") from None
        if entry.get("entry_type") != "attempt" or entry.get("status") != EVALUATED:
            continue
        findings += _attempt_findings(entry, where, threshold, config_hash)
    if not findings:
        raise DataError(
            f"garak_report={path}: no evaluated attempts (entry_type 'attempt', status 2)"
        )
    return findings


def _attempt_findings(
    entry: dict[str, Any], where: str, threshold: float, chash: str
) -> list[dict[str, Any]]:
    chat = _chat(entry.get("prompt"), where)
    probe = str(entry.get("probe_classname") or "garak")
    attack = Attack(
        prompt=chat[-1]["content"],
        source=GARAK,
        category=probe.split(".")[0],
        family=probe,
        messages=chat if len(chat) > 1 else None,
        id=str(entry.get("uuid") or ""),
        meta={"goal": entry.get("goal")},
    )
    scores = {d: _flat(s) for d, s in (entry.get("detector_results") or {}).items()}
    findings = []
    for i, output in enumerate(entry.get("outputs") or []):
        judges = {}
        for detector, values in scores.items():
            score = values[i] if i < len(values) else None
            verdict = None if score is None else (HARMFUL if score >= threshold else SAFE)
            judges[f"garak:{detector}"] = {"score": score, "verdict": verdict}
        findings.append(
            {
                "id": f"{attack.id}-{i}",
                "config_hash": chash,
                "attack": attack.to_dict(),
                "sample": i,
                "response": _text(output) or "",
                "judges": judges,
                "success": any(v["verdict"] == HARMFUL for v in judges.values()),
            }
        )
    return findings
