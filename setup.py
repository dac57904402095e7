"""Ships the top-level `conf/` inside the package as `bigft/conf`; the rest is in pyproject.toml.

The Hydra configs are bigft's main interface, so they live at the top of the repository where
Hydra users look for them; an installed bigft (wheel or `pip install -e .`) finds them as package
data. pyproject.toml cannot map one sub-package onto another directory while also finding the
others, hence this shim.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["bigft*"]), "bigft.conf"],
    package_dir={"bigft.conf": "conf"},
)
