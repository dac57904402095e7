"""A red language model writing test cases (Perez et al. 2022, "Red Teaming Language Models
with Language Models").

Zero-shot: the model continues an instruction such as "List of questions to ask someone:\\n1."
and the first line it writes is a new test case. Few-shot: the attacks that succeeded so far are
listed after the instruction as examples ("1. ...\\n2. ...\\n3."), so later rounds write more of
what worked. The red LM also rewords template attacks (the `paraphrase` mutation).
"""

from __future__ import annotations

import random
from typing import Any

import torch

from bigft.redteam.attacks import RED_LM, Attack
from bigft.redteam.target import Target, generate

ZERO_SHOT, FEW_SHOT = "red_lm_zero_shot", "red_lm_few_shot"


class RedLM:
    def __init__(self, target: Target, cfg: Any) -> None:
        self.target, self.cfg = target, cfg

    def _complete(self, prompts: list[str], samples: int, seed: int) -> list[list[str]]:
        tok = self.target.tokenizer
        ids = [list(tok(p)["input_ids"]) for p in prompts]
        torch.manual_seed(seed)
        return generate(
            self.target.model,
            tok,
            ids,
            samples=samples,
            max_new_tokens=self.cfg.max_new_tokens,
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
        )

    def few_shot_prompt(self, examples: list[str]) -> str:
        lines = [f"{i}. {text.strip()}" for i, text in enumerate(examples, 1)]
        return (
            self.cfg.instruction.rstrip().removesuffix("1.").rstrip()
            + "\n"
            + "\n".join([*lines, f"{len(lines) + 1}."])
        )

    def propose(self, round_no: int, successes: list[Attack]) -> list[Attack]:
        """This round's new test cases: few-shot from up to `few_shot` successes, else zero-shot."""
        rng = random.Random(f"{self.cfg.seed}-{round_no}")
        pool = [a.prompt for a in successes]
        examples = rng.sample(pool, min(self.cfg.few_shot, len(pool)))
        prompt = self.few_shot_prompt(examples) if examples else self.cfg.instruction
        texts = self._complete([prompt], self.cfg.per_round, self.cfg.seed + round_no)[0]
        family = FEW_SHOT if examples else ZERO_SHOT
        seen: set[str] = set()
        attacks = []
        for text in texts:
            case = first_line(text)
            if case and case not in seen:
                seen.add(case)
                attacks.append(
                    Attack(
                        prompt=case,
                        source=RED_LM,
                        category=self.cfg.category,
                        family=family,
                        meta={"round": round_no},
                    )
                )
        return attacks

    def paraphrase(self, texts: list[str]) -> list[str]:
        prompts = [self.cfg.paraphrase_prompt.format(text=t) for t in texts]
        outs = self._complete(prompts, 1, self.cfg.seed) if prompts else []
        return [first_line(o[0]) for o in outs]


def first_line(text: str) -> str:
    """The test case in a completion: its first non-empty line, stripped."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""
