"""Red teaming: find where a model misbehaves, measure it, and turn the failures into training data.

attacks (people's files, templates × fillers × mutations, a red LM: attacks.py, red_lm.py) ──►
target generates (target.py) ──► judges score (judges.py; people via review.py) ──►
findings.jsonl and the ASR report (findings.py) ──► export to task=dpo/sft/reward/RL data with
a held-out split (export.py). garak.py reads a garak report as findings. scan.py runs one scan;
cli.py is `bigft-redteam`. demo.py and demo_loop.py are the loop in the demo world.
"""
