"""Running a job: pipeline options, the job manifest's life cycle, progress lines."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager

from apache_beam.options.pipeline_options import PipelineOptions

from mixlm.schemas import JobManifest
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


def _is_local(args: Sequence[str]) -> bool:
    return f"--runner={LOCAL_RUNNER}" in args or any(
        a == "--runner" and i + 1 < len(args) and args[i + 1] in (LOCAL_RUNNER, "DirectRunner")
        for i, a in enumerate(args))


def describe_counts(manifest: JobManifest) -> str:
    c = manifest.counts
    return (f"read {c.read:,}  encoded {c.encoded:,}  unchanged {c.skipped_unchanged:,}  written {c.written:,}  "
            f"deleted {c.deleted:,}  stale {c.stale:,}  dead-lettered {c.dead_lettered:,}")


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


def run_job(store: EmbeddingStore, job: JobManifest, run: Callable[[], None], log: Callable[[str], None],
            *, stop_reason: Callable[[], str] = lambda: "") -> JobManifest:
    """Run the pipeline under the job's manifest: succeeded, or failed with the error."""
    try:
        with progress_reporter(store, job.job_id, log):
            run()
    except BaseException as exc:
        store.jobs.finish(job.job_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    reason = stop_reason()
    if reason:
        store.jobs.update(job.job_id, outputs={"stopped_by": reason})
    return store.jobs.finish(job.job_id)
