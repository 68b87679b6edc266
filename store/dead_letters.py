"""The dead-letter log: each job's ``DeadLetter``s (``mixlm.schemas.dead_letter``), with the reason and raw bytes.

They are written in the same transaction as the records and counts of their bundle, so a
crash never loses one that was counted.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator

import lmdb

from mixlm.schemas.dead_letter import DeadLetter
from mixlm.store.environment import LmdbEnvironment

_SEQ = struct.Struct(">Q")


class DeadLetterLog:
    def __init__(self, env: LmdbEnvironment):
        self._env = env
        self._db = env.dbs["dead_letters"]

    def append_in(self, txn: lmdb.Transaction, job_id: str, first_seq: int, letters: list[DeadLetter]) -> None:
        """Store ``letters`` as the job's numbers ``first_seq...`` (its dead_lettered count before them)."""
        prefix = job_id.encode() + b"\x00"
        for seq, letter in enumerate(letters, start=first_seq):
            value = json.dumps({"reason": letter.reason, "raw": base64.b64encode(letter.raw).decode(),
                                "source": letter.source, "at": letter.at}).encode()
            txn.put(prefix + _SEQ.pack(seq), value, db=self._db)

    def list(self, job_id: str, limit: int | None = None) -> Iterator[DeadLetter]:
        prefix = job_id.encode() + b"\x00"
        with self._env.read() as txn:
            cursor = txn.cursor(db=self._db)
            if not cursor.set_range(prefix):
                return
            for count, (key, value) in enumerate(cursor):
                if not bytes(key).startswith(prefix) or (limit is not None and count >= limit):
                    break
                data = json.loads(bytes(value))
                yield DeadLetter(data["reason"], base64.b64decode(data["raw"]), data["source"], data["at"])
