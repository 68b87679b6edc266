"""Paths shared by every command, each overridable by an environment variable."""

import os
from pathlib import Path


def mixlm_home() -> Path:
    """``$MIXLM_HOME``, else ``~/.cache/mixlm``: fetched models and the embedded broker's state."""
    return Path(os.environ.get("MIXLM_HOME") or Path.home() / ".cache" / "mixlm").expanduser()


def default_store_path() -> Path:
    """``$MIXLM_STORE``, else ``$XDG_DATA_HOME/mixlm/store`` (``~/.local/share/mixlm/store``)."""
    if os.environ.get("MIXLM_STORE"):
        return Path(os.environ["MIXLM_STORE"]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "mixlm" / "store"
