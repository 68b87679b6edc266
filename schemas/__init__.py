"""Data contracts: ItemEvent, EmbeddingRecord, JobManifest, DeadLetter, the LMDB value format,
BEIR collections (``mixlm.schemas.beir``) and the error model (``mixlm.schemas.errors``).

The bottom layer: nothing here imports another mixlm package. Arrow schemas live in
``mixlm.schemas.arrow`` so that importing the contracts does not import pyarrow. Nothing here
imports torch.
"""

from mixlm.schemas.dead_letter import DeadLetter
from mixlm.schemas.embedding_record import DTYPES, EmbeddingRecord, check_encoder_id
from mixlm.schemas.errors import (
    CorruptRecordError,
    InputError,
    MixlmError,
    PathNotFoundError,
    UnavailableError,
    ValidationError,
)
from mixlm.schemas.item_event import DEFAULT_MAX_TEXT_BYTES, ItemEvent, parse_item_event
from mixlm.schemas.job_manifest import (
    JOB_KINDS,
    JOB_STATUSES,
    JobCounts,
    JobManifest,
    new_job_id,
)

__all__ = [
    "DEFAULT_MAX_TEXT_BYTES",
    "DTYPES",
    "JOB_KINDS",
    "JOB_STATUSES",
    "CorruptRecordError",
    "DeadLetter",
    "EmbeddingRecord",
    "InputError",
    "ItemEvent",
    "JobCounts",
    "JobManifest",
    "MixlmError",
    "PathNotFoundError",
    "UnavailableError",
    "ValidationError",
    "check_encoder_id",
    "new_job_id",
    "parse_item_event",
]
