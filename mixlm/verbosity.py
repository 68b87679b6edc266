"""Third-party noise: progress bars and warnings of the libraries under mixlm stay out of normal output.

Loading a model prints tqdm bars (transformers' "Loading weights", "Writing model shards", the
GGUF conversion of ``mixlm models fetch``), and torch and transformers warn about their own
deprecations. ``mixlm`` hides them unless it runs with ``-v``; its own progress lines and errors
are unaffected. The switches are environment variables, read when those libraries are first
imported (the commands import them lazily, after this runs) and inherited by the processes a
command starts (Beam and Dask workers); a library imported already is switched directly. A
variable the user set is left as it is.
"""

from __future__ import annotations

import os
import sys
import warnings

QUIET_ENVIRONMENT = {
    "TQDM_DISABLE": "1",  # every tqdm bar: transformers', huggingface_hub's, the GGUF reader's
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",  # transformers' logged warnings
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "PYTHONWARNINGS": "ignore",  # warnings in the Python processes a command starts
}


def quiet_third_party() -> None:
    """Hide third-party progress bars and warnings in this process and the ones it starts."""
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"mixlm(\.|$)")  # ours still show
    if "transformers" in sys.modules:
        from transformers.utils import logging

        logging.disable_progress_bar()
        logging.set_verbosity_error()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
