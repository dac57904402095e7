"""What a run prints for people: the config at a glance, and base vs tuned at the end."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def _short(value: object) -> str:
    text = str(value).replace("\n", "\\n")
    return text if len(text) <= 60 else text[:57] + "..."


def compact_config(cfg: DictConfig) -> str:
    """One line per config group (`method: name=lora r=16 ...`): the whole run at a glance."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    lines, scalars = [], []
    for key, value in resolved.items():
        if isinstance(value, dict):
            items = " ".join(f"{k}={_short(v)}" for k, v in value.items())
            lines.append(f"  {key}: {items}")
        else:
            scalars.append(f"{key}={_short(value)}")
    return "config: " + " ".join(scalars) + "\n" + "\n".join(lines)


def comparison_table(base: dict[str, float], tuned: dict[str, float]) -> str:
    """Base vs tuned model, side by side, for every eval metric both report."""
    keys = [k for k in tuned if k in base]
    if not keys:
        return ""
    width = max(len(k) for k in keys)
    lines = [f"{'metric':<{width}}  {'base':>10}  {'tuned':>10}  {'change':>10}"]
    for key in keys:
        delta = tuned[key] - base[key]
        lines.append(f"{key:<{width}}  {base[key]:>10.3f}  {tuned[key]:>10.3f}  {delta:>+10.3f}")
    return "\n".join(lines)
