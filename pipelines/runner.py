"""Running a job: pipeline options, the job manifest's life cycle, progress lines."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from apache_beam.options.pipeline_options import PipelineOptions

from mixlm.schemas import JobManifest
from mixlm.schemas.errors import JobCancelled
from mixlm.store import EmbeddingStore

# Offline, Beam's DirectRunner first tries to download the Prism runner and then falls back
# to the in-process FnApiRunner; asking for that runner directly skips the failed download.
LOCAL_RUNNER = "FnApiRunner"
PROGRESS_EVERY_S = 2.0


def pipeline_options(beam_args: Sequence[str], *, streaming: bool = False) -> PipelineOptions:
    args = list(beam_args)
    if not any(arg == "--runner" or arg.startswith("--runner=") for arg in args):
        args.append(f"--runner={LOCAL_RUNNER}")
    if streaming and "--streaming" not in args and not _is_local(args):
        args.append("--streaming")
    return PipelineOptions(args)


DASK_ALIASES = ("dask", "DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner",
                "mixlm.pipelines.dask_runner.DaskRunner")


def runner_name(beam_args: Sequence[str]) -> str | None:
    """The value of ``--runner`` among Beam arguments, if any."""
    args = list(beam_args)
    for index, arg in enumerate(args):
        if arg.startswith("--runner="):
            return arg.split("=", 1)[1]
        if arg == "--runner" and index + 1 < len(args):
            return args[index + 1]
    return None


def is_dask_runner(beam_args: Sequence[str]) -> bool:
    """``--runner dask`` (or Beam's or mixlm's DaskRunner): the backfill runs on a Dask cluster."""
    return runner_name(beam_args) in DASK_ALIASES


def _is_local(args: Sequence[str]) -> bool:
    return f"--runner={LOCAL_RUNNER}" in args or any(
        a == "--runner" and i + 1 < len(args) and args[i + 1] in (LOCAL_RUNNER, "DirectRunner")
        for i, a in enumerate(args))


def describe_counts(manifest: JobManifest) -> str:
    """The counts on one line; corrupt records replaced only when there were any (they are rare and notable)."""
    c = manifest.counts
    line = (f"read {c.read:,}  encoded {c.encoded:,}  unchanged {c.skipped_unchanged:,}  written {c.written:,}  "
            f"deleted {c.deleted:,}  stale {c.stale:,}  dead-lettered {c.dead_lettered:,}")
    return line + (f"  corrupt-replaced {c.corrupt_replaced:,}" if c.corrupt_replaced else "")


@contextmanager
def progress_reporter(store: EmbeddingStore, job_id: str, log: Callable[[str], None]):
    """Print the job's counts every few seconds while the pipeline runs."""
    done = threading.Event()

    def report() -> None:
        last = None
        while not done.wait(PROGRESS_EVERY_S):
            line = describe_counts(store.jobs.get(job_id))
            if line != last:
                log(f"[{job_id}] {line}")
                last = line

    thread = threading.Thread(target=report, name="mixlm-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


class _Cancellation:
    """The signal that cancelled the running job, if one did (Beam rewraps the exception it raised)."""

    signum: int | None = None


_CANCELLATION = _Cancellation()


@contextmanager
def signals_cancel_job() -> Iterator[None]:
    """SIGTERM and SIGINT raise JobCancelled in the main thread: a bounded job stops where it is.

    What it committed stays (every store write is one LMDB transaction). Later signals are
    ignored until the block ends, so that marking the manifest cannot be interrupted.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handled = (signal.SIGTERM, signal.SIGINT)

    def cancel(signum: int, _frame) -> None:
        for other in handled:
            signal.signal(other, signal.SIG_IGN)
        _CANCELLATION.signum = signum
        raise JobCancelled(signum, f"cancelled by {signal.Signals(signum).name}")

    previous = {signum: signal.signal(signum, cancel) for signum in handled}
    _CANCELLATION.signum = None
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _CANCELLATION.signum = None


@contextmanager
def logger_level(name: str, level: int) -> Iterator[None]:
    """The named logger at ``level`` for the block, then back at its own."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def beam_failure_logs_silenced():
    """Beam logs a failing DoFn's traceback; the job's manifest and the caller's exception already say it once."""
    return logger_level("apache_beam.runners.common", logging.CRITICAL)


def run_job(store: EmbeddingStore, job: JobManifest, run: Callable[[], None], log: Callable[[str], None],
            *, stop_reason: Callable[[], str] = lambda: "") -> JobManifest:
    """Run the pipeline under the job's manifest: succeeded, cancelled by a signal, or failed with the error."""
    try:
        with progress_reporter(store, job.job_id, log), beam_failure_logs_silenced():
            run()
    except BaseException as exc:
        if _CANCELLATION.signum is not None:
            signum = _CANCELLATION.signum
            cancelled = JobCancelled(signum, f"cancelled by {signal.Signals(signum).name}")
            manifest = store.jobs.finish(job.job_id, status="cancelled", error=str(cancelled))
            log(f"[{job.job_id}] {cancelled}; committed before it: {describe_counts(manifest)}")
            raise cancelled from None
        first_line = (str(exc).strip().splitlines() or [""])[0]
        store.jobs.finish(job.job_id, status="failed", error=f"{type(exc).__name__}: {first_line}")
        raise
    reason = stop_reason()
    if reason:
        store.jobs.update(job.job_id, outputs={"stopped_by": reason})
    return store.jobs.finish(job.job_id)
