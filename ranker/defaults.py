"""Defaults of the ranker, its service and its text baselines, declared once for the library and
the commands that show them (no heavy imports here, so ``--help`` stays instant)."""

DEFAULT_MAX_CANDIDATES = 1_000  # distinct item ids one request may rank
DEFAULT_MAX_QUEUE = 64  # ranking requests in flight or waiting before new ones get 429
DEFAULT_BATCH_SIZE = 16  # most requests sharing one forward pass
DEFAULT_BATCH_WAIT_MS = 5.0  # how long a request waits for others to share its forward pass
DEFAULT_TRUNCATE_TOKENS = 64  # item tokens the truncated-text baseline reads
