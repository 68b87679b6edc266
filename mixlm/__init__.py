"""mixlm: MixLM ranking with cached item embedding tokens (arXiv 2512.07846)."""

from mixlm.version import __version__

__all__ = ["__version__"]
