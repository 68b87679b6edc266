"""Beam backfill and streaming jobs that fill the store."""

import logging


class _DropBeamImportNotice(logging.Filter):
    """Beam's import warns on the root logger that BigQuery clients are absent; mixlm never uses them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("apitools not found")


logging.getLogger().addFilter(_DropBeamImportNotice())
