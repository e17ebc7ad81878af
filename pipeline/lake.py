"""The lake: one root directory holding every stage's output.

Layout under the root (``MEL_HOME``, default ``./.mel``)::

    tables/<name>.parquet      one table per asset (mentions, entities, quarantine, ...)
    state/                     bookkeeping such as the file-hash cache
    duckdb/<name>.duckdb       DuckDB caches and indexes
    features/<store>/          CLIP feature stores (pipeline.features.store)
    index/entity/, index/trained/  the zero-shot and the trained FAISS indexes (pipeline.index)
    models/                    local model exports (the LLM's HF folder)
    mmoe/                      MMoE training runs and evaluation outputs (pipeline.training)
    datasets/demo/             the generated demo dataset (when no dataset is configured)
    dagster/                   DAGSTER_HOME for the UI, schedules and sensors

`pipeline.catalog` names every artifact in it (tables, stores, index folders, caches); stages use its names.

Every file is written under a temporary name in its final directory and renamed
into place once complete (`pipeline.atomic`), so a crash never leaves a half-written file that a later
run would take for done. Each table carries a ``fingerprint`` of the inputs it was
computed from in its Parquet schema metadata; a stage reuses its stored output when
the fingerprint of its current inputs matches.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import atomic_path
from pipeline.errors import MELUserError
from pipeline.hashing import table_content_hash
from pipeline.locks import exclusive_lock

FINGERPRINT_KEY = b"mel.fingerprint"
WRITTEN_AT_KEY = b"mel.written_at"
EXTRA_KEY = b"mel.extra"
PREVIEW_ROWS = 10


def default_root() -> Path:
    return Path(os.environ.get("MEL_HOME", ".mel")).resolve()


class SharedDuckDB:
    """A DuckDB file that concurrent runs share (the WikiData and LLM choice caches).

    DuckDB lets one process at a time open a file for writing; a second gets an IO error. So every operation
    opens the file under an inter-process lock (`<file>.lock`), runs, commits and closes: two runs at once
    take turns for milliseconds instead of failing. Subclasses set `label` (for messages) and `schema_sql`.
    """

    label = "cache"
    schema_sql = ""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._schema_ready = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing stays open between operations; kept so callers can use the cache as a context manager."""

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        lock = self.path.with_name(f"{self.path.name}.lock")
        with exclusive_lock(lock):
            con = _connect(self.path, self.label)
            try:
                if not self._schema_ready:
                    con.execute(self.schema_sql)
                    self._schema_ready = True
                yield con
            finally:
                con.close()


def _connect(path: Path, label: str) -> duckdb.DuckDBPyConnection:
    """Open (or create) `path`; a file locked by a process outside the pipeline, or unreadable, is a
    MELUserError naming the cache and the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return duckdb.connect(str(path))
    except duckdb.Error as error:
        if isinstance(error, duckdb.IOException) and "lock" in str(error).lower():
            raise MELUserError(f"The {label} {path} is in use by another process; wait for that run to finish.") from None
        raise MELUserError(f"The {label} {path} cannot be opened ({error}); delete it to start afresh.") from None


@dataclass
class StoredTable:
    """What a stage wrote (or reused): where the table is, its shape and its first rows.

    Stages return these in their reports, so callers show a table without reading it back.
    """

    name: str
    path: Path
    num_rows: int
    schema: pa.Schema
    head: list[dict]  # the first PREVIEW_ROWS rows
    fingerprint: str | None  # of the inputs it was computed from

    @functools.cached_property
    def content_hash(self) -> str:
        """A digest of the rows and schema as stored (not of the write time): a data version that changes only
        when the content does. Read on first use (the whole table)."""
        return table_content_hash(pq.read_table(self.path))


class Lake:
    """Paths and atomic table I/O under one root directory.

    `description_source` says which mention texts the mention feature store holds (see
    `pipeline.features.items.DESCRIPTION_SOURCES`): "auto" is the main store; another source (an ablation such as
    "none") has a store of its own beside it, and every stage after the features reads that one
    (`catalog.mention_store_dir`).
    """

    def __init__(self, root: Path | str | None = None, description_source: str = "auto"):
        self.root = Path(root).resolve() if root is not None else default_root()
        self.description_source = description_source

    def __repr__(self) -> str:
        return f"Lake({str(self.root)!r})"

    # -- locations -------------------------------------------------------------------
    def table_path(self, name: str) -> Path:
        return self.root / "tables" / f"{name}.parquet"

    def state_path(self, name: str) -> Path:
        return self.root / "state" / name

    def duckdb_path(self, name: str) -> Path:
        return self.root / "duckdb" / f"{name}.duckdb"

    def dir(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def demo_dataset_dir(self) -> Path:
        return self.root / "datasets" / "demo"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    # -- tables ----------------------------------------------------------------------
    def write_table(
        self, name: str, table: pa.Table, fingerprint: str, extra: dict | None = None
    ) -> Path:
        """Write ``table`` atomically, recording the fingerprint of its inputs."""
        metadata = dict(table.schema.metadata or {})
        metadata[FINGERPRINT_KEY] = fingerprint.encode()
        metadata[WRITTEN_AT_KEY] = dt.datetime.now(dt.timezone.utc).isoformat().encode()
        if extra:
            metadata[EXTRA_KEY] = json.dumps(extra, sort_keys=True).encode()
        table = table.replace_schema_metadata(metadata)
        target = self.table_path(name)
        with atomic_path(target) as temp:
            pq.write_table(table, temp, compression="zstd")
        return target

    def read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        path = self.table_path(name)
        if not path.is_file():
            raise FileNotFoundError(
                f"Table '{name}' has not been materialized yet (no file at {path})."
            )
        return pq.read_table(path, columns=columns)

    def has_table(self, name: str) -> bool:
        return self.table_path(name).is_file()

    def table_fingerprint(self, name: str) -> str | None:
        """The fingerprint stored with a table, or None when it does not exist."""
        path = self.table_path(name)
        if not path.is_file():
            return None
        metadata = pq.read_schema(path).metadata or {}
        value = metadata.get(FINGERPRINT_KEY)
        return value.decode() if value else None

    def table_extra(self, name: str) -> dict:
        metadata = pq.read_schema(self.table_path(name)).metadata or {}
        value = metadata.get(EXTRA_KEY)
        return json.loads(value) if value else {}

    def stored_table(self, name: str) -> StoredTable:
        """A stored table's description, reading its schema and first rows only."""
        path = self.table_path(name)
        if not path.is_file():
            raise FileNotFoundError(f"Table '{name}' has not been materialized yet (no file at {path}).")
        file = pq.ParquetFile(path)
        metadata = file.schema_arrow.metadata or {}
        head = next(file.iter_batches(batch_size=PREVIEW_ROWS), None)
        return StoredTable(
            name=name, path=path, num_rows=file.metadata.num_rows, schema=file.schema_arrow.remove_metadata(),
            head=head.to_pylist() if head is not None else [],
            fingerprint=(metadata.get(FINGERPRINT_KEY) or b"").decode() or None)

    def tables_up_to_date(self, names: list[str], fingerprint: str) -> bool:
        return all(self.table_fingerprint(name) == fingerprint for name in names)


def cache_hit_rate(hits: int, asked: int) -> float:
    """Share of a run's distinct questions (search strings, prompts) that a cache answered; 1.0 when none
    had to be asked. Shown per materialization, it tells a warm run from a cold one at a glance."""
    return hits / asked if asked else 1.0
