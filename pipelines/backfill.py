"""The batch backfill: a catalog file -> encoder -> the store, as one bounded Beam job.

On a distributed runner (Dataflow, Flink) workers cannot share one LMDB file: run with
``--snapshot-only DIR`` (a path every worker reaches) so that the Parquet snapshot is the
job's output and its counts come back as Beam metrics; then build LMDB from it with
``mixlm-store load DIR``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from mixlm.encoders.config import BundleConfig
from mixlm.pipelines.composite import EncodeToStore
from mixlm.pipelines.runner import pipeline_options, run_job, signals_cancel_job
from mixlm.pipelines.sources import ReadCatalog
from mixlm.pipelines.stop import STOP
from mixlm.pipelines.transforms import METRICS_NAMESPACE
from mixlm.schemas import DEFAULT_MAX_TEXT_BYTES, JobManifest
from mixlm.store import EmbeddingStore


def run_backfill(input_path: str, bundle_dir: str, store_path: str, *, fmt: str = "auto",
                 beam_args: Sequence[str] = (), snapshot_dtype: str = "float32", snapshot_only: str | None = None,
                 max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES, device: str | None = None,
                 log: Callable[[str], None] = print) -> JobManifest:
    if not Path(input_path).exists():
        raise FileNotFoundError(f"input {input_path} does not exist")
    encoder_id = BundleConfig.load(bundle_dir).encoder_id
    store = EmbeddingStore.open(store_path, create=True)
    outputs = {"snapshot": str(Path(snapshot_only).resolve())} if snapshot_only else {
        "lmdb": str((store.root / "lmdb").resolve())}
    job = store.jobs.create("backfill", encoder_id, params={
        "input": str(Path(input_path).resolve()), "format": fmt, "bundle": str(Path(bundle_dir).resolve()),
        "snapshot_only": snapshot_only is not None, "beam_args": list(beam_args)}, outputs=outputs)
    log(f"backfill {job.job_id}: {input_path} -> {snapshot_only or store.root} (encoder {encoder_id})")
    # Catalog rows without a version get the job's start time: later runs win, equal content is skipped.
    default_version = int(time.time() * 1000)
    STOP.configure(max_seconds=None, max_records=None)  # the readers honour STOP; a stream may have left it set

    def run() -> None:
        pipeline = beam.Pipeline(options=pipeline_options(beam_args))
        (pipeline
         | "ReadCatalog" >> ReadCatalog(input_path, fmt, default_version)
         | "EncodeToStore" >> EncodeToStore(
                    store_path=str(store.root), bundle_dir=bundle_dir, encoder_id=encoder_id, job_id=job.job_id,
                    max_text_bytes=max_text_bytes, device=device, snapshot_only_root=snapshot_only,
                    sink_options={"snapshot_dtype": snapshot_dtype}))
        result = pipeline.run()
        result.wait_until_finish()
        if snapshot_only:
            counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
            store.jobs.update(job.job_id, counts={c.key.metric.name: c.committed or 0 for c in counters})

    with signals_cancel_job():
        return run_job(store, job, run, log)
