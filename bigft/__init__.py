"""bigft: distributed fine-tuning of large language models.

The package follows the data flow of one run (see DESIGN.md): config → distributed env →
models → methods → data/tasks → engine → tracking/outputs.
"""

__version__ = "0.1.0"
