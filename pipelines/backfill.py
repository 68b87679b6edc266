"""The batch backfill: a catalog file -> encoder -> the store, as one bounded Beam job.

On a distributed runner (Dask, Dataflow, Flink) workers cannot share one LMDB file: run with
``--snapshot-only DIR`` (a path every worker reaches) so that the Parquet snapshot is the
job's output and its counts come back as Beam metrics, or, where the runner reports none
(Dask), from the counts files beside the parts; then build LMDB from it with
``mixlm-store load DIR``. ``--runner dask`` joins a Dask cluster (``dask_address``) or starts
a local one of ``dask_workers`` processes for the job (``pipelines/dask_runner.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from mixlm.encoders.config import BundleConfig
from mixlm.pipelines.composite import EncodeToStore
from mixlm.pipelines.runner import is_dask_runner, pipeline_options, run_job, signals_cancel_job
from mixlm.pipelines.sources import ReadCatalog
from mixlm.pipelines.stop import STOP
from mixlm.pipelines.transforms import METRICS_NAMESPACE, snapshot_counts
from mixlm.schemas import DEFAULT_MAX_TEXT_BYTES, InputError, JobManifest, PathNotFoundError
from mixlm.store import EmbeddingStore


def run_backfill(input_path: str, bundle_dir: str, store_path: str, *, fmt: str = "auto",
                 beam_args: Sequence[str] = (), snapshot_dtype: str = "float32", snapshot_only: str | None = None,
                 max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES, device: str | None = None,
                 dask_address: str | None = None, dask_workers: int | None = None, torch_threads: int | None = None,
                 log: Callable[[str], None] = print) -> JobManifest:
    """``--runner dask`` among ``beam_args`` runs it on Dask: ``dask_address`` joins a cluster, else a local
    one of ``dask_workers`` processes runs for the job; ``torch_threads`` per worker process."""
    if not Path(input_path).exists():
        raise PathNotFoundError(f"input {input_path} does not exist")
    on_dask = is_dask_runner(beam_args)
    _check_dask_arguments(on_dask, snapshot_only, dask_address, dask_workers, torch_threads)
    encoder_id = BundleConfig.load(bundle_dir).encoder_id
    store = EmbeddingStore.open(store_path, create=True)
    outputs = {"snapshot": str(Path(snapshot_only).resolve())} if snapshot_only else {
        "lmdb": str((store.root / "lmdb").resolve())}
    params = {"input": str(Path(input_path).resolve()), "format": fmt, "bundle": str(Path(bundle_dir).resolve()),
              "snapshot_only": snapshot_only is not None, "beam_args": list(beam_args)}
    if on_dask:
        params.update(dask_address=dask_address, dask_workers=dask_workers, torch_threads=torch_threads)
    job = store.jobs.create("backfill", encoder_id, params=params, outputs=outputs)
    log(f"backfill {job.job_id}: {input_path} -> {snapshot_only or store.root} (encoder {encoder_id})")
    # Catalog rows without a version get the job's start time: later runs win, equal content is skipped.
    default_version = int(time.time() * 1000)
    STOP.configure(max_seconds=None, max_records=None)  # the readers honour STOP; a stream may have left it set

    def run() -> None:
        with ExitStack() as cluster:
            args, splits, threads = list(beam_args), None, torch_threads
            if on_dask:
                from mixlm.pipelines.dask_runner import SPLITS_PER_SLOT, dask_beam_args, dask_cluster

                address, slots, threads = cluster.enter_context(dask_cluster(dask_address, dask_workers, torch_threads))
                log(f"backfill {job.job_id}: Dask scheduler {address}, {slots} task slots"
                    + (f", {threads} torch threads per worker process" if threads else ""))
                args, splits = dask_beam_args(beam_args, address), slots * SPLITS_PER_SLOT
            pipeline = beam.Pipeline(options=pipeline_options(args))
            (pipeline
             | "ReadCatalog" >> ReadCatalog(input_path, fmt, default_version, splits=splits)
             | "EncodeToStore" >> EncodeToStore(
                        store_path=str(store.root), bundle_dir=bundle_dir, encoder_id=encoder_id, job_id=job.job_id,
                        max_text_bytes=max_text_bytes, device=device, snapshot_only_root=snapshot_only,
                        sink_options={"snapshot_dtype": snapshot_dtype}, torch_threads=threads))
            result = pipeline.run()
            result.wait_until_finish()
        if snapshot_only:
            counts, outputs = _metric_counts(result), {}
            if not counts:  # no metrics from this runner: the counts files the sink wrote beside the parts
                from_files, writers = snapshot_counts(snapshot_only, job.job_id)
                if counts is None or any(from_files.values()):
                    counts, outputs = from_files, {"counts_from": "snapshot", "workers": ",".join(sorted(writers))}
            store.jobs.update(job.job_id, counts=counts, outputs=outputs)

    with signals_cancel_job():
        return run_job(store, job, run, log)


def _metric_counts(result) -> dict[str, int] | None:
    """The job's counters as Beam metrics; None where the runner has no metrics (Dask's ``metrics()`` raises)."""
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
    except NotImplementedError:
        return None
    return {c.key.metric.name: c.committed or 0 for c in counters}


def _check_dask_arguments(on_dask: bool, snapshot_only: str | None, dask_address: str | None,
                          dask_workers: int | None, torch_threads: int | None) -> None:
    if not on_dask:
        if dask_address or dask_workers or torch_threads:
            raise InputError("--dask-address, --dask-workers and --torch-threads go with --runner dask")
        return
    if not snapshot_only:
        raise InputError("--runner dask writes a snapshot, not LMDB: give --snapshot-only DIR, a folder every "
                         "worker can write, then 'mixlm-store load DIR'")
    if dask_address and dask_workers:
        raise InputError("give --dask-address (join a cluster) or --dask-workers (start a local one), not both")
