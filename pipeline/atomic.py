"""Crash-safe file writes: write under a temporary name in the target's folder, then rename into place.

A crash never leaves a half-written file that a later run would take for done; temporaries of dead
processes are removed by the next write of the same target.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from pipeline.locks import process_alive

TEMP_MARKER = ".tmp-"


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    On any exception (or a crash) ``target`` keeps its previous content and the
    temporary file is removed (or, after a crash, left under a name no reader uses).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    temp = target.with_name(f".{target.name}{TEMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield temp
        if temp.is_file():
            with open(temp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(temp, target)
    finally:
        if temp.is_file():
            temp.unlink()


def _remove_stale_temps(target: Path) -> None:
    """Delete temporaries of ``target`` left by processes that no longer run."""
    for leftover in target.parent.glob(f".{target.name}{TEMP_MARKER}*"):
        pid = leftover.name.rsplit(TEMP_MARKER, 1)[1].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            leftover.unlink(missing_ok=True)


def write_text_atomic(target: Path, text: str) -> None:
    with atomic_path(target) as temp:
        temp.write_text(text, encoding="utf-8")
