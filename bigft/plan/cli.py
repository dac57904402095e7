"""`bigft-plan`: per-GPU memory of a training config before anything is launched.

Composes the same config as bigft-train (conf/plan.yaml pulls in train.yaml), so any experiment
or override can be planned; reads only the model's HF config (model.shape or a local
config.json), never weights or data. Exits 0 with a verdict, 2 on a config mistake.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bigft.config import CONF_DIR
from bigft.config.validate import validate
from bigft.errors import exit_on_user_error, run_hydra_app


@hydra.main(config_path=str(CONF_DIR), config_name="plan", version_base="1.3")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    from bigft.plan import check_fits

    validate(cfg)  # what bigft-train would refuse, bigft-plan refuses too
    print(check_fits(cfg).render(), flush=True)


def main() -> None:
    run_hydra_app(_hydra_main)


if __name__ == "__main__":
    main()
