"""Backfill input formats (kept apart from the readers so the CLI loads without Beam)."""

FORMATS = ("auto", "events", "beir", "parquet")
