"""When a streaming job stops: SIGTERM/SIGINT, a time bound or a record bound.

The local runner runs the pipeline in this process, so the source reads one process-wide
``StopSignal``. On a distributed runner each worker has its own and the bounds apply per
worker; stop such a job with the runner's drain instead.
"""

from __future__ import annotations

import signal
import threading
import time


class StopSignal:
    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self.reason = ""
        self.deadline: float | None = None
        self.max_records: int | None = None
        self.records = 0

    def configure(self, *, max_seconds: float | None, max_records: int | None) -> None:
        self._event.clear()
        self.reason = ""
        self.records = 0
        self.deadline = None if max_seconds is None else time.monotonic() + max_seconds
        self.max_records = max_records

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        if not self._event.is_set() and self.deadline is not None and time.monotonic() >= self.deadline:
            self.set("max-seconds reached")
        return self._event.is_set()

    def claim_record(self) -> bool:
        """Count one record read; False past the record bound (reaching it stops the job)."""
        with self._lock:
            if self.max_records is not None and self.records >= self.max_records:
                return False
            self.records += 1
            if self.max_records is not None and self.records >= self.max_records:
                self.set("max-records reached")
            return True

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT end the job cleanly (only from the main thread)."""
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda num, _frame: self.set(signal.Signals(num).name))


STOP = StopSignal()
