"""``mixlm kafka up|down|status``: the embedded broker (Tansu) as a background daemon."""

from __future__ import annotations

from pathlib import Path

import click

from mixlm.errors import user_errors
from mixlm.output import echo_err, key_value_table, output_option, render

_state_option = click.option(
    "--state-dir", type=click.Path(path_type=Path, file_okay=False), default=None, envvar="MIXLM_KAFKA_STATE_DIR",
    show_envvar=True, help="where the pid file, port and log live (default: $MIXLM_HOME/kafka)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def kafka() -> None:
    """Run the embedded Kafka broker (Tansu, memory storage) for demos and tests.

    Any Kafka works in its place: pass its address as --bootstrap-servers.
    """


@kafka.command()
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="listen port on 127.0.0.1 (default: a free one)")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.5), default=20.0, show_default=True,
              help="seconds to wait for the broker to answer")
@_state_option
@user_errors
def up(port: int | None, timeout_s: float, state_dir: Path | None) -> None:
    """Start the broker in the background; prints its bootstrap address (127.0.0.1:PORT).

    Idempotent: when one already runs for this state directory, prints its address.
    """
    from mixlm.devbroker.broker import start_daemon

    state, started = start_daemon(port, state_dir, ready_timeout=timeout_s)
    if not started:
        note = f"already running (pid {state.pid})"
        if port is not None and port != state.port:
            note += f"; --port {port} ignored, run `mixlm kafka down` first to change it"
        echo_err(note)
    click.echo(state.bootstrap_servers)


@kafka.command()
@_state_option
@user_errors
def down(state_dir: Path | None) -> None:
    """Stop the background broker (SIGTERM, then SIGKILL). Its topics are gone: storage is in memory."""
    from mixlm.devbroker.broker import stop_daemon

    state = stop_daemon(state_dir)
    click.echo(f"stopped (pid {state.pid}, {state.bootstrap_servers})" if state else "not running")


@kafka.command()
@_state_option
@output_option()
@user_errors
def status(state_dir: Path | None, output: str) -> None:
    """Whether the background broker runs, and where. Exit code 0 either way."""
    from mixlm.devbroker import broker as kb

    state = kb.daemon_status(state_dir)
    data = {
        "running": state is not None,
        "bootstrap_servers": state.bootstrap_servers if state else None,
        "pid": state.pid if state else None,
        "port": state.port if state else None,
        "listening": kb.port_open(kb.HOST, state.port) if state else False,
        "started_at": (state.started_at or None) if state else None,
        "log": state.log if state else None,
        "state_dir": str(kb.state_dir(state_dir)),
    }
    click.echo(render(data, output, key_value_table(data)))
