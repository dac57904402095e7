"""bigft: distributed fine-tuning of large language models.

The package follows the data flow of one run (see DESIGN.md): config → distributed env →
models → methods → data/tasks → engine → tracking/outputs.
"""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes' CPU backend warns at import that an optional hub kernel ("kernels-community")
# is missing, on every command, though its built-in CPU kernels serve bigft; real problems
# from it still show (errors).
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
