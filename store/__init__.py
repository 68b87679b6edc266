"""The versioned embedding store: LMDB online records, Parquet snapshots, job registry.

Nothing here imports torch.
"""

from mixlm.store.errors import (
    CorruptItemError,
    EncoderNotFoundError,
    JobNotFoundError,
    StoreCorruptError,
    StoreError,
    StoreNotFoundError,
)
from mixlm.store.jobs import JobRegistry
from mixlm.store.online import EmbeddingStore, Lookup, WriteResult
from mixlm.store.snapshot import SnapshotWriter, read_snapshot, snapshot_files
from mixlm.store.transfer import export_snapshot, load_snapshot

__all__ = [
    "CorruptItemError",
    "EmbeddingStore",
    "EncoderNotFoundError",
    "JobNotFoundError",
    "JobRegistry",
    "Lookup",
    "SnapshotWriter",
    "StoreCorruptError",
    "StoreError",
    "StoreNotFoundError",
    "WriteResult",
    "export_snapshot",
    "load_snapshot",
    "read_snapshot",
    "snapshot_files",
]
