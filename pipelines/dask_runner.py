"""The backfill on Dask (``--runner dask``): Beam's Dask runner, fixed where the job needs it, and its cluster.

Beam's ``DaskRunner`` translates Create, ParDo, GroupByKey and Flatten into Dask bag
operations; every ParDo runs one bundle per bag partition, and a chain of ParDos is fused
into one Dask task per partition. What that means for the backfill, found on Beam 2.77:

- Splittable reads (``ReadFromText``, ``ReadFromParquet``) do not translate, and
  ``Reshuffle`` is a no-op, so a ``Create``'s partitions are the job's only parallelism:
  ``ReadCatalog(splits=N)`` plans file splits while the pipeline is built, and the job
  asks for one partition per split (``--dask_partition_size=1``).
- Its ParDo drops what a DoFn emits from ``finish_bundle``, and ``BatchElements``
  (RunInference's batching) emits each bundle's last batch there: the ``DaskRunner`` below
  keeps those outputs. Its ParDo also hands every partition the same DoFn and output list,
  which is only safe where each task unpickles its own copy (worker processes; not a cluster
  of threads in the client's process): below, every bundle gets its own copy. Nothing else
  of the runner changes.
- Its result reports no metrics (``metrics()`` raises ``NotImplementedError``): the
  snapshot-only sink also writes its counts beside the parts, and the backfill sums them.
- It never closes the client it opens: the result below closes it when the job ends.

This module needs the ``dask`` extra; the backfill imports it only for ``--runner dask``.
Workers import ``mixlm`` as the driver does, so every worker's environment needs the package
(the same version) and must reach the bundle and the input at the same paths.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from unittest import mock

try:
    import cloudpickle
    import dask
    import dask.distributed as distributed
    from apache_beam.runners.dask import dask_runner, transform_evaluator
except ImportError as exc:  # the optional extra: pip install 'mixlm[dask]'
    from mixlm.schemas import InputError

    raise InputError(f"--runner dask needs Dask: pip install 'mixlm[dask]' ({exc})") from None
from apache_beam.runners.common import DoFnInvoker

from mixlm.pipelines.runner import logger_level
from mixlm.schemas import UnavailableError

DASK_RUNNER = "mixlm.pipelines.dask_runner.DaskRunner"
SPLITS_PER_SLOT = 2  # splits of the input per worker thread: a slow split does not hold up the job for long


def dask_beam_args(beam_args: Sequence[str], address: str) -> list[str]:
    """``beam_args`` with this module's runner, the scheduler's address, and one bag partition per split."""
    args, skip = [], False
    for arg in beam_args:
        if skip:
            skip = False
        elif arg == "--runner":
            skip = True
        elif not arg.startswith("--runner="):
            args.append(arg)
    args += [f"--runner={DASK_RUNNER}", f"--dask_client_address={address}"]
    if not any(a.split("=", 1)[0] in ("--dask_npartitions", "--dask_partition_size") for a in args):
        args.append("--dask_partition_size=1")
    return args


@contextmanager
def dask_cluster(address: str | None = None, workers: int | None = None,
                 torch_threads: int | None = None) -> Iterator[tuple[str, int, int | None]]:
    """``(scheduler address, task slots, torch threads per worker)``: an existing cluster, or a local one.

    The task slots are the cluster's worker threads, all workers together. A local cluster
    runs ``workers`` processes of one task thread each, and each process gets
    ``torch_threads`` torch threads (default: this machine's cores shared out; Dask's nanny
    would start them with ``OMP_NUM_THREADS=1``). It is stopped when the block ends. An
    existing cluster's workers keep their own torch threads unless ``torch_threads`` is given.
    """
    if address:
        with distributed.Client(address, timeout="30s") as client:
            slots = sum(client.nthreads().values())
        if slots == 0:
            raise UnavailableError(f"the Dask scheduler at {address} has no workers")
        yield address, slots, torch_threads
        return
    workers = workers or os.cpu_count() or 1
    threads = torch_threads or max(1, (os.cpu_count() or 1) // workers)
    # Set in the environment of each worker process as it starts (Dask's default is OMP_NUM_THREADS=1).
    # The nannies run in this process and set it in os.environ first: it is put back afterwards.
    worker_env = {"OMP_NUM_THREADS": str(threads), "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "warning"}
    saved = dict(os.environ)
    try:
        with logger_level("distributed", logging.WARNING), dask.config.set({"distributed.nanny.pre-spawn-environ": {
                **dask.config.get("distributed.nanny.pre-spawn-environ"), **worker_env}}):
            cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                               dashboard_address=None, silence_logs=logging.ERROR)
            try:
                yield cluster.scheduler_address, workers, threads
            finally:
                cluster.close()
    finally:
        for name in set(os.environ) | set(saved):
            if name not in saved:
                del os.environ[name]
            elif os.environ.get(name) != saved[name]:
                os.environ[name] = saved[name]


def apply_dofn_to_bundle(items, do_fn_invoker_args, do_fn_invoker_kwargs, tagged_receivers):
    """The bundle of one Dask partition, as Beam's, but keeping what ``finish_bundle`` emits (Beam's drops it),
    and on its own copy of the DoFn and its output list.

    Beam passes every partition of a ParDo the same DoFn and the same output list: where a
    worker runs tasks without unpickling their arguments (threads in the client's process),
    each partition's output would also hold the outputs of the partitions before it.
    """
    do_fn_invoker_args, do_fn_invoker_kwargs, tagged_receivers = cloudpickle.loads(
        cloudpickle.dumps((do_fn_invoker_args, do_fn_invoker_kwargs, tagged_receivers)))
    invoker = DoFnInvoker.create_invoker(*do_fn_invoker_args, **do_fn_invoker_kwargs)
    invoker.invoke_setup()
    try:
        invoker.invoke_start_bundle()
        for item in items:
            invoker.invoke_process(item)
        invoker.invoke_finish_bundle()
    finally:
        invoker.invoke_teardown()
    return [value.value for value in tagged_receivers.values]


class DaskRunnerResult(dask_runner.DaskRunnerResult):
    """Closes the runner's client when the job ends or is cancelled (Beam's leaves it open)."""

    def wait_until_finish(self, duration=None):
        try:
            return super().wait_until_finish(duration)
        finally:
            self.client.close()

    def cancel(self):
        try:
            return super().cancel()
        finally:
            self.client.close()


class DaskRunner(dask_runner.DaskRunner):
    """Beam's Dask runner, keeping ``finish_bundle`` outputs and closing its client; nothing else changes."""

    def run_pipeline(self, pipeline, options):
        # The bag graph is built in here, so the tasks carry the fixed function.
        with mock.patch.object(transform_evaluator, "apply_dofn_to_bundle", apply_dofn_to_bundle):
            result = super().run_pipeline(pipeline, options)
        return DaskRunnerResult(result.client, result.futures)
