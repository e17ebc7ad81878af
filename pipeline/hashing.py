"""Content hashes of input files, computed once per file version.

Hashing every image of a 100k-entity KB on each run would cost minutes, so digests are
cached by (path, size, mtime): a file is read again only when its size or modification
time changed, as git's index does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import atomic_path


def new_hasher():
    return hashlib.blake2b(digest_size=16)


def hash_bytes(data: bytes) -> str:
    hasher = new_hasher()
    hasher.update(data)
    return hasher.hexdigest()


def hash_strings(parts: Iterable[str]) -> str:
    """Digest of a sequence of strings (order matters, boundaries are unambiguous)."""
    hasher = new_hasher()
    for part in parts:
        encoded = part.encode("utf-8", "surrogatepass")
        hasher.update(len(encoded).to_bytes(8, "little"))
        hasher.update(encoded)
    return hasher.hexdigest()


def table_content_hash(table: pa.Table) -> str:
    """A digest of a table's rows and schema, not of its metadata or file (which carries a write time)."""
    table = table.replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hash_bytes(sink.getvalue().to_pybytes())


def hash_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, new_hasher).hexdigest()


def list_files(directory: Path) -> list[Path]:
    """Every regular file under ``directory``, sorted, skipping hidden names."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / name for name in filenames if not name.startswith("."))
    return sorted(found)


def stat_fingerprint(files: Iterable[Path]) -> str:
    """A cheap fingerprint from names, sizes and mtimes only (for change detection)."""
    parts = []
    for path in sorted(files):
        stat = path.stat()
        parts += [str(path), str(stat.st_size), str(stat.st_mtime_ns)]
    return hash_strings(parts)


class FileHashCache:
    """Persistent map path -> content digest, trusted while size and mtime are unchanged."""

    _schema = pa.schema(
        [("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("digest", pa.string())]
    )

    def __init__(self, store: Path):
        self.store = Path(store)
        self._entries: dict[str, tuple[int, int, str]] = {}
        self.hashed = 0  # files actually read in this session
        if self.store.is_file():
            table = pq.read_table(self.store).to_pydict()
            for path, size, mtime, digest in zip(
                table["path"], table["size"], table["mtime_ns"], table["digest"]
            ):
                self._entries[path] = (size, mtime, digest)

    def digest(self, path: Path) -> str:
        key = str(Path(path).resolve())
        stat = os.stat(key)
        cached = self._entries.get(key)
        if cached and cached[0] == stat.st_size and cached[1] == stat.st_mtime_ns:
            return cached[2]
        digest = hash_file(Path(key))
        self.hashed += 1
        self._entries[key] = (stat.st_size, stat.st_mtime_ns, digest)
        return digest

    def fingerprint(self, files: Iterable[Path], root: Path) -> str:
        """Digest over each file's path relative to ``root`` and its content digest."""
        parts = []
        for path in sorted(files):
            parts += [str(path.relative_to(root)), self.digest(path)]
        return hash_strings(parts)

    def save(self) -> None:
        rows = sorted(self._entries.items())
        table = pa.table(
            {
                "path": [path for path, _ in rows],
                "size": [entry[0] for _, entry in rows],
                "mtime_ns": [entry[1] for _, entry in rows],
                "digest": [entry[2] for _, entry in rows],
            },
            schema=self._schema,
        )
        with atomic_path(self.store) as temp:
            pq.write_table(table, temp)
