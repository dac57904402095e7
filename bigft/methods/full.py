"""method=full: every parameter trains."""

from __future__ import annotations

import torch


def apply_full(model: torch.nn.Module) -> torch.nn.Module:
    for param in model.parameters():
        param.requires_grad_(True)
    return model
