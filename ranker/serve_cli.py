"""``mixlm serve``: the ranking service under uvicorn, and ``ServerThread`` to run it in-process.

SIGTERM and SIGINT stop it gracefully: the socket closes, in-flight requests finish (up to
``--graceful-timeout``), the batcher drains and stops, and the command exits 0.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import logging.config
import signal
import socket
import threading
import time
from pathlib import Path

import click

from mixlm.errors import user_errors
from mixlm.options import bundle_option, store_option
from mixlm.ranker.defaults import DEFAULT_BATCH_SIZE, DEFAULT_BATCH_WAIT_MS, DEFAULT_MAX_CANDIDATES, DEFAULT_MAX_QUEUE
from mixlm.schemas.errors import InputError, PathNotFoundError, UnavailableError

log = logging.getLogger("mixlm.serve")


@click.command()
@bundle_option()
@store_option()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="the address to listen on (loopback unless told otherwise)")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="0 picks a free port (the log says which)")
@click.option("--max-queue", type=click.IntRange(min=1), default=DEFAULT_MAX_QUEUE, show_default=True,
              help="ranking requests in flight or waiting before new ones get 429")
@click.option("--max-candidates", type=click.IntRange(min=1), default=DEFAULT_MAX_CANDIDATES, show_default=True,
              help="distinct item ids per request; more get 413")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True,
              help="most requests sharing one forward pass")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=DEFAULT_BATCH_WAIT_MS, show_default=True,
              help="how long a request waits for others to share its forward pass")
@click.option("--auth-token-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="require 'Authorization: Bearer <the file's token>' on every endpoint but /healthz")
@click.option("--graceful-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="seconds SIGTERM/SIGINT wait for in-flight requests")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="one line per request")
@user_errors
def serve(bundle_dir, store_path, host, port, max_queue, max_candidates, batch_size, batch_wait_ms,
          auth_token_file, graceful_timeout, log_level, access_log):
    """Serve the ranker over HTTP: POST /v1/rerank and /v1/score, GET /healthz, /readyz, /metrics.

    Models load after the port opens: /healthz answers at once, /readyz once they are loaded
    and the store holds the bundle's encoder. The API: docs/serving.md.
    """
    from mixlm.ranker.server import create_app
    from mixlm.ranker.service import bundle_client_factory
    from mixlm.store import EmbeddingStore

    token = read_token_file(auth_token_file) if auth_token_file else None
    EmbeddingStore.open(store_path, readonly=True)  # a wrong --store fails here, in one line (exit 3)
    factory = bundle_client_factory(bundle_dir, store_path, max_candidates=max_candidates)
    app = create_app(factory, auth_token=token, max_queue=max_queue, batch_wait_ms=batch_wait_ms,
                     batch_size=batch_size)
    sock = bind_socket(host, port)
    logging.config.dictConfig(logging_config(log_level))  # only now: the checks above fail in one plain line
    if auth_token_file and auth_token_file.stat().st_mode & 0o077:
        log.warning("auth token file %s is readable by others (chmod 600 it)", auth_token_file)
    if token is None and not _is_loopback(host):
        log.warning("listening on %s without --auth-token-file: anyone who reaches it can rank", host)
    run_server(app, sock, log_level=log_level, access_log=access_log, graceful_timeout=graceful_timeout)


def read_token_file(path: Path) -> str:
    """The bearer token in ``path`` (surrounding whitespace dropped); a missing or empty file is refused."""
    if not path.is_file():
        raise PathNotFoundError(f"auth token file {path} does not exist")  # exit 2
    token = path.read_text(encoding="utf-8", errors="replace").strip()
    if not token:
        raise InputError(f"auth token file {path} is empty")
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        raise InputError(f"auth token file {path} must hold one token of printable ASCII without spaces")
    return token


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket for uvicorn; a port in use is one line, exit 5.

    Listening from here on, connections wait in the backlog until the server takes them: a caller
    that saw "serving on" never meets a refused connection.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UnavailableError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def logging_config(level: str) -> dict:
    """uvicorn's own log format, extended to the ``mixlm`` loggers."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["mixlm"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def run_server(app, sock: socket.socket, *, log_level: str = "info", access_log: bool = True,
               graceful_timeout: float = 30.0) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM or SIGINT, then drain and return (the process exits 0)."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                            timeout_graceful_shutdown=graceful_timeout, lifespan="on", log_config=None)
    server = uvicorn.Server(config)

    def stop(signum, frame):
        server.should_exit = True

    # uvicorn re-raises the signal that stopped it once it is done, under the handlers it found: these
    # make that a no-op, so a graceful stop exits 0 instead of dying by the signal.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    shown = f"[{host}]" if ":" in host else host
    log.info("serving on http://%s:%d (SIGTERM or Ctrl+C stops it gracefully)", shown, port)
    server.run(sockets=[sock])


class ServerThread:
    """``app`` under uvicorn on a thread of this process (tests, benches): ``with ServerThread(app) as s: s.url``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, *, graceful_timeout: float = 30.0):
        self.app = app
        self._sock = bind_socket(host, port)
        self.host, self.port = self._sock.getsockname()[:2]
        self._graceful_timeout = graceful_timeout
        self._server = None
        self._thread = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        import uvicorn

        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=self._graceful_timeout, lifespan="on", log_config=None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="mixlm-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful, as on SIGTERM: in-flight requests finish, then the batcher stops."""
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
