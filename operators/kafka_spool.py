"""The local spool of sink.kafka: an append-only JSONL file of records waiting for the broker.

A sidecar file holds the byte offset up to which the broker has acknowledged the records
(`<spool>.committed`, replaced atomically); only acknowledged records are ever dropped, when
the whole file is acknowledged (compaction truncates it). Appends reach the OS on every call,
so a killed process loses nothing; `fsync` decides what survives a machine crash too.
A lock file keeps two processes from sharing one spool.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Literal

from engine.errors import FramegraphError

FsyncPolicy = Literal["always", "interval", "never"]


class SpoolBusy(FramegraphError):
    """Another process holds this spool."""


class Spool:
    """Records (one line each) in order; read from the committed offset, acknowledged by offset."""

    def __init__(self, path: Path, fsync: FsyncPolicy = "interval", fsync_interval_s: float = 1.0) -> None:
        self.path = path
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        path.parent.mkdir(parents=True, exist_ok=True)
        self._sidecar = path.with_name(path.name + ".committed")
        self._lock_file = path.with_name(path.name + ".lock").open("w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            self._lock_file.close()
            raise SpoolBusy(f"spool {path} is in use by another process") from e
        self._mutex = threading.Lock()
        self._drop_torn_tail()
        self._file: IO[bytes] = path.open("ab")
        self._size = self._file.tell()
        self._committed = min(self._read_sidecar(), self._size)
        self._last_sync = time.monotonic()

    @property
    def size(self) -> int:
        """Bytes written (complete records only)."""
        return self._size

    @property
    def committed(self) -> int:
        """Bytes acknowledged by the broker: replay starts here."""
        return self._committed

    @property
    def pending(self) -> bool:
        return self._size > self._committed

    def append(self, lines: Sequence[bytes]) -> None:
        """Add records at the tail, in order (each line ends with a newline)."""
        if not lines:
            return
        with self._mutex:
            self._file.write(b"".join(lines))
            self._file.flush()
            self._size = self._file.tell()
            self._sync(self._file)

    def read(self, offset: int, max_records: int) -> list[tuple[bytes, int]]:
        """Up to `max_records` records from byte `offset`, each with the offset just past it."""
        with self._mutex:
            end = self._size
        out: list[tuple[bytes, int]] = []
        if offset >= end:
            return out
        with self.path.open("rb") as f:
            f.seek(offset)
            while len(out) < max_records and offset < end:
                line = f.readline()
                offset += len(line)
                out.append((line, offset))
        return out

    def count(self, offset: int) -> int:
        """How many records lie between byte `offset` and the end (reads them: for messages only)."""
        with self._mutex:
            end = self._size
        n = 0
        with self.path.open("rb") as f:
            f.seek(offset)
            left = end - offset
            while left > 0 and (chunk := f.read(min(left, 1 << 20))):
                n += chunk.count(b"\n")
                left -= len(chunk)
        return n

    def commit(self, offset: int) -> None:
        """Record that the broker acknowledged everything before `offset`."""
        with self._mutex:
            self._write_sidecar(offset)

    def compact(self) -> bool:
        """Truncate the spool if every record in it is acknowledged; True when it did."""
        with self._mutex:
            if self._committed != self._size:
                return False
            if self._size:
                self._file.truncate(0)
                self._file.seek(0)
                self._size = 0
                self._write_sidecar(0)
            return True

    def prepend(self, lines: Sequence[bytes]) -> None:
        """Put records before every unacknowledged one (records that failed before those spooled)."""
        if not lines:
            return
        with self._mutex:
            tmp = self.path.with_name(self.path.name + ".tmp")
            with self.path.open("rb") as old, tmp.open("wb") as new:
                new.write(b"".join(lines))
                old.seek(self._committed)
                while chunk := old.read(1 << 20):
                    new.write(chunk)
                new.flush()
                os.fsync(new.fileno())
            # Offset 0 first: a crash between the two replays acknowledged records (duplicates), never skips.
            self._write_sidecar(0)
            os.replace(tmp, self.path)
            self._file.close()
            self._file = self.path.open("ab")
            self._size = self._file.tell()

    def close(self) -> None:
        with self._mutex:
            self._file.flush()
            if self.fsync != "never":
                os.fsync(self._file.fileno())
            self._file.close()
        self._lock_file.close()

    def _sync(self, f: IO[bytes]) -> None:
        now = time.monotonic()
        if self.fsync == "always" or (
            self.fsync == "interval" and now - self._last_sync >= self.fsync_interval_s
        ):
            os.fsync(f.fileno())
            self._last_sync = now

    def _read_sidecar(self) -> int:
        try:
            return int(self._sidecar.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _write_sidecar(self, offset: int) -> None:
        tmp = self._sidecar.with_name(self._sidecar.name + ".tmp")
        with tmp.open("w") as f:
            f.write(str(offset))
            f.flush()
            if self.fsync == "always":
                os.fsync(f.fileno())
        os.replace(tmp, self._sidecar)
        self._committed = offset

    def _drop_torn_tail(self) -> None:
        """A record half-written when a process died is cut off (it was never acknowledged)."""
        if not self.path.exists():
            return
        with self.path.open("rb+") as f:
            end = f.seek(0, os.SEEK_END)
            pos = end
            while pos > 0:
                start = max(0, pos - (1 << 16))
                f.seek(start)
                chunk = f.read(pos - start)
                if b"\n" in chunk:
                    keep = start + chunk.rfind(b"\n") + 1
                    break
                pos = start
            else:
                keep = 0
            if keep != end:
                f.truncate(keep)
