"""A file lock per cache entry, so that concurrent sweep jobs build a shared artefact once.

The first job to need an entry takes `<entry file>.lock`, builds the entry and writes it atomically;
the others wait on the lock, then find the entry and load it. The caller re-checks for the entry
after acquiring the lock (build-or-load runs entirely inside `cache_lock`). The OS releases the lock
of a process that dies, so a killed job never leaves the others waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout


def lock_path(entry: Path) -> Path:
    """The lock file that guards `entry` (next to it, same name plus `.lock`)."""
    return entry.with_name(entry.name + ".lock")


@contextmanager
def cache_lock(entry: str | Path, what: str = "cache entry") -> Iterator[None]:
    """Hold the lock of a cache entry; if another process holds it, log that and wait (no time limit)."""
    entry = Path(entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path(entry)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logging.getLogger("diffquant").info("Waiting for another job building the %s %s", what, entry)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
