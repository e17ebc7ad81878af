"""Inter-process coordination on one machine: an exclusive file lock and a liveness test for a PID.

Dagster runs are processes; two of them (two inbox partitions, or a partition while the schedule re-embeds
the KB) may touch the same file. Writers serialise on an `flock` next to what they write; readers of the
feature stores and the index take no lock (they see one committed generation or the next).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive_lock(path: Path | str, logger=None, waiting: str = "") -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if needed) for the block.

    When another process holds it, `waiting` (e.g. "Another run is writing X; waiting for it to finish.") is
    logged once and the call blocks until the lock is free. The lock file stays: deleting it would race with
    waiters. The kernel releases the lock when its holder dies, so a crashed run never blocks the next.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if logger is not None and waiting:
                logger.info(waiting)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def process_alive(pid: int) -> bool:
    """Whether a process with this PID runs (a PID of another user's process counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
