"""``mixlm backfill`` and ``mixlm stream``: the two jobs that fill the store."""

from __future__ import annotations

import logging

import click

from mixlm.errors import user_errors
from mixlm.options import bundle_option, store_option
from mixlm.output import echo_err
from mixlm.pipelines.formats import FORMATS
from mixlm.pipelines.kafka_options import kafka_client_options, topic_name
from mixlm.schemas import DEFAULT_MAX_TEXT_BYTES, DTYPES

_common = [
    click.option("--snapshot-dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
                 help="vector type of the job's Parquet snapshot"),
    click.option("--max-text-bytes", type=click.IntRange(min=1), default=DEFAULT_MAX_TEXT_BYTES, show_default=True,
                 help="larger items are dead-lettered"),
    click.option("--device", default=None, help="encoder device (default: cuda if available, else cpu)"),
]
_RUN_CONTEXT = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": ["-h", "--help"]}


def _with_common(func):
    for option in reversed(_common):
        func = option(func)
    return func


@click.command(context_settings=_RUN_CONTEXT)
@click.option("--input", "input_path", required=True, type=click.Path(),
              help="ItemEvent JSONL, a BEIR corpus.jsonl[.gz], or Parquet (file or folder)")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True)
@bundle_option()
@store_option()
@click.option("--snapshot-only", type=click.Path(file_okay=False), default=None,
              help="write only a Parquet snapshot to this folder (distributed runners); then 'mixlm-store load' it")
@click.option("--dask-address", default=None, metavar="tcp://HOST:PORT",
              help="with --runner dask: the scheduler of a running Dask cluster to join")
@click.option("--dask-workers", type=click.IntRange(min=1), default=None,
              help="with --runner dask: start a local cluster of this many worker processes for the job "
                   "(default without --dask-address: one per core)")
@click.option("--torch-threads", type=click.IntRange(min=1), default=None,
              help="with --runner dask: torch threads per worker process (default: a local cluster shares the "
                   "cores out; a joined cluster's workers keep theirs)")
@_with_common
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED)
@user_errors
def backfill(input_path, fmt, bundle_dir, store_path, snapshot_only, dask_address, dask_workers, torch_threads,
             snapshot_dtype, max_text_bytes, device, beam_args):
    """Encode a catalog into the store as one batch job; prints the job id last.

    Extra arguments (--runner, --project, ...) go to Beam; without --runner the job runs in
    this process. Items whose content is unchanged since the last run are not encoded again.
    '--runner dask --snapshot-only DIR' runs it on Dask (docs/pipelines.md).
    """
    from mixlm.pipelines.backfill import run_backfill
    from mixlm.pipelines.runner import describe_counts

    manifest = run_backfill(input_path, bundle_dir, str(store_path), fmt=fmt, beam_args=beam_args,
                            snapshot_dtype=snapshot_dtype, snapshot_only=snapshot_only,
                            max_text_bytes=max_text_bytes, device=device, dask_address=dask_address,
                            dask_workers=dask_workers, torch_threads=torch_threads, log=echo_err)
    echo_err(f"{manifest.status}: {describe_counts(manifest)}")
    click.echo(manifest.job_id)


@click.command(context_settings=_RUN_CONTEXT)
@click.option("--bootstrap-servers", required=True, envvar="MIXLM_BOOTSTRAP_SERVERS", help="Kafka host:port[,...]")
@click.option("--topic", required=True, callback=topic_name, help="topic of ItemEvents (key = item_id)")
@click.option("--group", "group_id", required=True, help="consumer group: offsets resume from its commits")
@bundle_option()
@store_option()
@click.option("--max-seconds", type=click.FloatRange(min=0), default=None, help="stop after this long")
@click.option("--max-records", type=click.IntRange(min=1), default=None, help="stop after reading this many")
@click.option("--dead-letter-topic", default=None, callback=topic_name,
              help="also publish dead letters to this topic")
@click.option("--broker-timeout", "broker_timeout_s", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="seconds to wait for the broker at the start, and to wait for it to come back when it goes away "
                   "(then the job fails, exit 5)")
@kafka_client_options
@_with_common
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED)
@user_errors
def stream(bootstrap_servers, topic, group_id, bundle_dir, store_path, max_seconds, max_records, dead_letter_topic,
           broker_timeout_s, kafka_config, kafka_option, snapshot_dtype, max_text_bytes, device, beam_args):
    """Consume item events from Kafka into the store until SIGTERM or a bound; prints the job id last.

    Every run is one member of the consumer group --group: runs of one group share the topic's
    partitions and take over those of a run that stops or dies. Offsets are committed to the
    group only after the store write is durable. Watch it live with 'mixlm-store get <job_id>'.
    """
    from mixlm.pipelines.kafka_options import KafkaOptions
    from mixlm.pipelines.runner import describe_counts
    from mixlm.pipelines.streaming import run_stream

    options = KafkaOptions.parse(kafka_option, kafka_config)
    # kafka-python logs every failed reconnect; the stream's health check reports an outage once instead.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    manifest = run_stream(bootstrap_servers, topic, group_id, bundle_dir, str(store_path), max_seconds=max_seconds,
                          max_records=max_records, dead_letter_topic=dead_letter_topic, beam_args=beam_args,
                          snapshot_dtype=snapshot_dtype, max_text_bytes=max_text_bytes, device=device,
                          broker_timeout_s=broker_timeout_s, kafka_options=options, log=echo_err)
    echo_err(f"{manifest.status}: {describe_counts(manifest)}")
    click.echo(manifest.job_id)
