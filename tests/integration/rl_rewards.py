"""Rule rewards for the task=grpo tests (reward.fn=tests.integration.rl_rewards:<name>).

The tiny random Llama writes byte soup; these rules are dense on it, so a short run can move them.
"""

from __future__ import annotations

import string


def letters(prompt: str, response: str) -> float:
    """The share of the response's characters that are ASCII lowercase letters."""
    return sum(c in string.ascii_lowercase for c in response) / max(len(response), 1)


def printable(prompt: str, response: str) -> float:
    """An eval-only check: the share of printable ASCII characters."""
    return sum(c in string.printable for c in response) / max(len(response), 1)
