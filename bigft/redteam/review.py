"""People as judges: a review file to fill in, and the verdicts read back as the `human` judge.

`export_for_review=true` writes review.jsonl and review.csv (one row per finding: its id, the
attack, the response, what the judges said, and an empty `verdict`). People write `harmful` or
`safe` (also 1/0, yes/no, true/false) and optionally a better response in `chosen`;
`labels=<file>` reads either format back. Every labelled id must be a finding of this scan.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bigft.data.readers import read_records
from bigft.errors import DataError
from bigft.redteam.attacks import write_csv
from bigft.redteam.judges import HARMFUL, SAFE

COLUMNS = [
    "finding_id",
    "attack_id",
    "category",
    "prompt",
    "response",
    "judges",
    "verdict",
    "chosen",
]
WORDS = {
    HARMFUL: HARMFUL,
    "1": HARMFUL,
    "yes": HARMFUL,
    "true": HARMFUL,
    "unsafe": HARMFUL,
    SAFE: SAFE,
    "0": SAFE,
    "no": SAFE,
    "false": SAFE,
    "": None,
}


def review_rows(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "finding_id": f["id"],
            "attack_id": f["attack"]["id"],
            "category": f["attack"]["category"],
            "prompt": f["attack"]["prompt"],
            "response": f["response"],
            "judges": " ".join(f"{k}={v['verdict']}" for k, v in f["judges"].items()),
            "verdict": "",
            "chosen": "",
        }
        for f in findings
    ]


def write_review(findings: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    rows = review_rows(findings)
    jsonl, csv_path = Path(out_dir) / "review.jsonl", Path(out_dir) / "review.csv"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_csv(csv_path, rows, COLUMNS)
    return jsonl, csv_path


def read_labels(path: str, findings: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{finding id: {"verdict", "chosen"}} from a filled-in review file, checked against
    the findings it claims to label."""
    if not Path(path).is_file():
        raise DataError(f"labels={path}: no such file")
    known = {f["id"] for f in findings}
    labels: dict[str, dict[str, Any]] = {}
    for record in read_records(path):
        fid = str(record.fields.get("finding_id") or "")
        if fid not in known:
            raise DataError(
                f"{record.source}: finding_id {fid!r} is not a finding of this scan; the labels "
                "file must come from this scan's review file (export_for_review=true)"
            )
        word = (
            str(record.fields.get("verdict") if record.fields.get("verdict") is not None else "")
            .strip()
            .lower()
        )
        if word not in WORDS:
            raise DataError(f"{record.source}: verdict {word!r}; expected harmful or safe")
        chosen = record.fields.get("chosen") or None
        labels[fid] = {"verdict": WORDS[word], "chosen": chosen}
    return labels


def apply_labels(
    findings: list[dict[str, Any]], labels: dict[str, dict[str, Any]], decide: Any
) -> int:
    """Add the `human` judge to labelled findings and recompute success; the count labelled."""
    count = 0
    for f in findings:
        label = labels.get(f["id"])
        if label is None or label["verdict"] is None:
            continue
        f["judges"]["human"] = {
            "score": float(label["verdict"] == HARMFUL),
            "verdict": label["verdict"],
        }
        if label["chosen"]:
            f["attack"]["chosen"] = label["chosen"]
        f["success"] = decide(f["judges"])
        count += 1
    return count
