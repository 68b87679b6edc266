"""Beam backfill and streaming jobs that fill the store (built in the pipelines issue)."""
