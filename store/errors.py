"""Errors of the store; each message is one line a person can act on."""

import errno

from mixlm.schemas.errors import (
    EXIT_CORRUPT,
    EXIT_NO_STORE,
    EXIT_NOT_FOUND,
    CorruptRecordError,
    MixlmError,
)

# errno values of a write the disk refused for want of space (EFBIG: the file size limit).
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class StoreError(MixlmError):
    """Base class of the store's errors (exit 1 unless a subclass says otherwise)."""


class StoreNotFoundError(StoreError):
    """No store at the path: nothing there, a file, not a mixlm store, or not an LMDB data file."""

    exit_code = EXIT_NO_STORE


class JobNotFoundError(StoreError):
    exit_code = EXIT_NOT_FOUND

    def __init__(self, job_id: str, store_path: str):
        self.job_id = job_id
        super().__init__(f"job {job_id!r} not found in store {store_path} (list jobs with 'mixlm-store jobs')")


class EncoderNotFoundError(StoreError):
    exit_code = EXIT_NOT_FOUND


class StoreCorruptError(StoreError):
    """The store's LMDB file or a snapshot part is damaged (not one record: see CorruptItemError)."""

    exit_code = EXIT_CORRUPT


class CorruptItemError(StoreError, CorruptRecordError):
    exit_code = EXIT_CORRUPT

    def __init__(self, encoder_id: str, item_id: str, reason: str):
        self.item_id = item_id
        super().__init__(f"corrupt record for item {item_id!r} (encoder {encoder_id}): {reason}")
