"""`bigft-pipeline pipeline=<name>`: a chain of bigft runs (sft → reward → rl; scan → export → dpo
→ rescan) from one config, locally in order or as Slurm jobs with afterok dependencies.

`stages.py` reads the config into stages; `state.py` says what each stage's run directory holds;
`plan.py` decides what runs (skip, resume, invalidate) and checks every stage first; `local.py`
and `slurm.py` run the plan; `cli.py` is the Hydra entry point.
"""
