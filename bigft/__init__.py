"""bigft: distributed fine-tuning of large language models.

The package follows the data flow of one run (see DESIGN.md): config → distributed env →
models → methods → data/tasks → engine → tracking/outputs.
"""

__version__ = "0.1.0"

import logging as _logging
import os as _os
import sys as _sys

# DeepSpeed's just-in-time ops are built inside this virtual environment rather than in the
# machine-wide ~/.cache/torch_extensions: a build killed there leaves a lock file on which every
# later build on the machine waits forever (see bigft/distributed/prepare.py). Outside a venv, or
# when the user set it, torch's choice stands.
if _sys.prefix != _sys.base_prefix:
    _os.environ.setdefault("TORCH_EXTENSIONS_DIR", _os.path.join(_sys.prefix, "torch_extensions"))

# bitsandbytes' CPU backend warns at import that an optional hub kernel ("kernels-community")
# is missing, on every command, though its built-in CPU kernels serve bigft; real problems
# from it still show (errors).
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
