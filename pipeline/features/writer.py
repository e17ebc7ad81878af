"""The feature store's writer: encoded rows -> part files, then a commit of the store's new generation.

Content addressing: a part row is keyed by its content key, hash(encoder identity, text, image digest).
A run reuses every row of every finished part whose key it needs: parts listed in the manifest and parts
left behind by a crashed run alike, so a crash resumes from the finished parts. Parts are written
atomically while encoding goes on; the manifest is replaced last, then parts without live rows and files of
older generations are deleted. Parts whose live rows fell under half are rewritten (compaction), so a store
refreshed many times stays near its live size. Rows that failed for a transient reason (``retry``) are
served but never reused. One writer at a time holds ``.lock``; readers take no lock and see either the old
or the new generation. Parts of other stores can be linked in first (``reuse_from``, see ``reuse``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from model.features import MMoEFeatures
from pipeline.atomic import TEMP_MARKER, atomic_path, write_text_atomic
from pipeline.errors import MELUserError
from pipeline.features import schema
from pipeline.features.mirror import mirror_table, write_mirror
from pipeline.features.reuse import link_committed_parts
from pipeline.hashing import hash_strings
from pipeline.locks import exclusive_lock

# Parquet encodes nested lists at ~50-150 MB/s per thread (pyarrow releases the GIL): enough threads that a
# GPU producing ~250 MB/s of ViT-B-32 features does not wait on them, one on a small machine.
WRITER_THREADS = max(1, min(4, (os.cpu_count() or 1) // 4))
COMPACT_BELOW = 0.5  # rewrite a part when fewer than this share of its rows are live

log = logging.getLogger(__name__)


@dataclass
class CommitResult:
    changed: bool  # False when the store already held exactly these items
    fingerprint: str
    rows: int
    parts_written: int  # in this run, compaction included
    parts_deleted: int
    issues_by_code: dict[str, int]


class StoreWriter:
    """Writes encoded rows as part files and commits them as the store's new generation.

    Use as a context manager: it holds the store's lock (a second writer waits for the first to finish).
    """

    def __init__(self, root: Path | str, identity: dict, recipe: dict, part_rows: int | None = None,
                 logger=log, reuse_from: tuple[Path, ...] = ()):
        self.root = Path(root)
        self.reuse_from = tuple(Path(source) for source in reuse_from)
        self.parts_linked = 0
        self.identity = identity
        self.identity_json = json.dumps(identity, sort_keys=True)
        self.recipe = recipe
        self.part_rows_setting = part_rows
        self.logger = logger
        self.dims: dict | None = None
        self.location: dict[str, tuple[str, int]] = {}  # content key -> (part, row) usable in this commit
        self.part_sizes: dict[str, int] = {}  # rows per part of this identity
        self.parts_written = 0
        self._pending: list[tuple | pa.Table] = []  # added batches, then the rest of a split one
        self._pending_rows = 0
        self._writes: list[Future] = []
        self._pool = ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="feature-part-writer")
        self._lock = None

    # -- lifecycle
    def __enter__(self) -> "StoreWriter":
        try:
            (self.root / "parts").mkdir(parents=True, exist_ok=True)
        except OSError as error:  # a file in the way, a read-only or unmounted disk
            raise MELUserError(f"Cannot write the feature store at {self.root}: {error.strerror} "
                               f"({error.filename}).") from None
        self._lock = exclusive_lock(self.root / ".lock", self.logger,
                                    f"Another run is writing {self.root}; waiting for it to finish.")
        self._lock.__enter__()
        self.parts_linked = sum(link_committed_parts(source, self.root, self.identity, self.logger)
                                for source in self.reuse_from)
        self._scan_parts()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._wait_for_writes()  # finished parts are kept: a re-run resumes from them
        finally:
            self._pool.shutdown(wait=True)
            self._lock.__exit__(None, None, None)

    def _scan_parts(self) -> None:
        """Index every finished part of this encoder identity, committed or left by a crashed run."""
        for parquet in sorted((self.root / "parts").glob("part-*.parquet")):
            try:
                metadata = pq.read_schema(parquet).metadata or {}
                if metadata.get(schema.ENCODER_KEY, b"").decode() != self.identity_json:
                    continue
                table = pq.read_table(parquet, columns=["content_key", "retry"])
            except (OSError, pa.ArrowException) as error:
                self.logger.warning(f"Ignoring unreadable feature part {parquet} ({error}); it will be deleted.")
                continue
            self.part_sizes[parquet.stem] = len(table)
            if self.dims is None:
                self.dims = schema.dims_from_shapes(json.loads(metadata[schema.SHAPES_KEY]))
            for row, (key, retry) in enumerate(zip(table.column("content_key").to_pylist(),
                                                    table.column("retry").to_pylist())):
                if not retry:
                    self.location.setdefault(key, (parquet.stem, row))

    @property
    def reusable_keys(self) -> set[str]:
        return set(self.location)

    # -- appending
    def set_dims(self, dims: dict) -> None:
        if self.dims is not None and self.dims != dims:
            raise ValueError(f"encoder dims {dims} differ from the stored {self.dims} for the same identity")
        self.dims = dims

    @property
    def part_rows(self) -> int:
        """Rows per part: about 64 MiB of features, so a crash loses little and parts stay few."""
        if self.part_rows_setting:
            return self.part_rows_setting
        shapes = schema.feature_shapes(self.dims)
        row_bytes = sum(int(np.prod(shape)) for shape in shapes.values()) * 2
        return max(64, (64 << 20) // row_bytes)

    def add(self, ids: list[str], keys: list[str], features: MMoEFeatures, retry: list[bool],
            issues: list[list[dict]]) -> None:
        """Queue the rows of ``features`` (CPU tensors) for the next part."""
        self._pending.append((ids, keys, features, retry, issues))
        self._pending_rows += len(ids)
        while self._pending_rows >= self.part_rows:
            self._flush(self.part_rows)

    def flush(self) -> None:
        if self._pending_rows:
            self._flush(self._pending_rows)

    def _flush(self, rows: int) -> None:
        """Write the first ``rows`` pending rows as a part, in the background."""
        table = _pending_table(self._pending, self.dims, self.identity)
        part, rest = table.slice(0, rows), table.slice(rows)
        self._pending = [rest] if len(rest) else []
        self._pending_rows = len(rest)
        name = _new_part_name()
        keys = part.column("content_key").to_pylist()
        self._wait_for_writes(keep=WRITER_THREADS)  # bounded RAM; writing overlaps encoding
        self._writes.append(self._pool.submit(self._write_part, name, part))
        for row, key in enumerate(keys):
            self.location[key] = (name, row)
        self.part_sizes[name] = len(part)
        self.parts_written += 1

    def _write_part(self, name: str, table: pa.Table) -> None:
        parquet, mirror = schema.part_paths(self.root, name)
        write_mirror(table, mirror)  # first: a part whose Parquet exists always has its mirror
        with atomic_path(parquet) as temp:
            pq.write_table(table, temp, **schema.PARQUET_OPTIONS)

    def _wait_for_writes(self, keep: int = 0) -> None:
        while len(self._writes) > keep:
            self._writes.pop(0).result()

    # -- committing
    def commit(self, ids: list[str], keys: list[str], provenance: dict | None = None) -> CommitResult:
        """Make ``ids`` (with their content keys, all encoded by now) the store's content."""
        self.flush()
        self._wait_for_writes()
        fingerprint = schema.store_fingerprint(ids, keys)
        layout = hash_strings([self.identity_json, json.dumps(self.recipe, sort_keys=True), *ids, *keys])
        current = schema.read_manifest(self.root)
        unchanged = current and current.get("layout") == layout and not schema.missing_files(self.root, current)
        if unchanged and self.parts_written == 0:
            return CommitResult(False, fingerprint, len(ids), 0, 0, current["issues_by_code"])

        locations = [self.location[key] for key in keys]
        locations = self._compact(locations)
        parts = sorted({part for part, _ in locations})
        part_index = {name: i for i, name in enumerate(parts)}
        generation = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        files = {"rows": f"rows-{generation}.parquet", "issues": f"issues-{generation}.parquet",
                 **{f"{kind}_pooled": f"{kind}_pooled-{generation}.npy" for kind in schema.POOLED_KINDS}}
        has_image, issues = self._write_pooled_and_collect(ids, locations, parts, files)
        rows = pa.table({
            "id": pa.array(ids, pa.string()),
            "content_key": pa.array(keys, pa.string()),
            "part": pa.array([part_index[part] for part, _ in locations], pa.int32()),
            "part_row": pa.array([row for _, row in locations], pa.int32()),
            "has_image": pa.array(has_image, pa.bool_()),
        })
        with atomic_path(self.root / files["rows"]) as temp:
            pq.write_table(rows, temp, compression="zstd")
        with atomic_path(self.root / files["issues"]) as temp:
            pq.write_table(pa.Table.from_pylist(issues, schema=schema.ISSUES_SCHEMA), temp, compression="zstd")
        manifest = {
            "format": schema.FORMAT_VERSION,
            "encoder": self.identity,
            "dims": self.dims,
            "shapes": schema.feature_shapes(self.dims),
            "recipe": self.recipe,
            "fingerprint": fingerprint,
            "layout": layout,
            "rows": len(ids),
            "parts": parts,
            "files": files,
            "issues_by_code": dict(sorted(Counter(issue["code"] for issue in issues).items())),
            "written_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "last_run": provenance or {},
        }
        write_text_atomic(self.root / schema.MANIFEST, json.dumps(manifest, indent=1))
        deleted = self._collect_garbage(manifest)
        return CommitResult(True, fingerprint, len(ids), self.parts_written, deleted, manifest["issues_by_code"])

    def _compact(self, locations: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Rewrite the live rows of mostly-dead parts into new parts; returns the updated locations."""
        live_rows: dict[str, set[int]] = {}
        for part, row in locations:
            live_rows.setdefault(part, set()).add(row)
        sparse = [part for part, rows in live_rows.items() if len(rows) < COMPACT_BELOW * self.part_sizes[part]]
        if not sparse:
            return locations
        tables, order = [], []
        for part in sparse:
            rows = sorted(live_rows[part])
            tables.append(mirror_table(self.root, part).take(rows))
            order += [(part, row) for row in rows]
        table = pa.concat_tables(tables)
        moved = {}
        for start in range(0, len(table), self.part_rows):
            chunk = table.slice(start, self.part_rows)
            name = _new_part_name()
            self._write_part(name, chunk)
            self.part_sizes[name] = len(chunk)
            self.parts_written += 1
            moved.update({location: (name, offset) for offset, location in enumerate(order[start:start + len(chunk)])})
        self.logger.info(f"Compacted {len(sparse)} sparse part(s): {len(table)} live rows rewritten.")
        return [moved.get(location, location) for location in locations]

    def _write_pooled_and_collect(self, ids, locations, parts, files) -> tuple[list[bool], list[dict]]:
        """Fill the pooled mirrors part by part; gather has_image and the live items' issues."""
        has_image: list[bool] = [False] * len(ids)
        issues: list[dict] = []
        rows_by_part: dict[str, list[int]] = {}
        for index, (part, _) in enumerate(locations):
            rows_by_part.setdefault(part, []).append(index)
        with atomic_path(self.root / files["text_pooled"]) as text_temp, \
                atomic_path(self.root / files["image_pooled"]) as image_temp:
            pooled = {
                "text": np.lib.format.open_memmap(text_temp, "w+", schema.STORED_FLOAT, (len(ids), self.dims["D"])),
                "image": np.lib.format.open_memmap(image_temp, "w+", schema.STORED_FLOAT, (len(ids), self.dims["D"])),
            }
            for part in parts:
                table = mirror_table(self.root, part)
                store_rows = np.asarray(rows_by_part[part])
                part_rows = np.asarray([locations[i][1] for i in store_rows])
                for kind in schema.POOLED_KINDS:
                    vectors = table.column(f"{kind}_pooled").chunk(0).values.to_numpy(zero_copy_only=True)
                    pooled[kind][store_rows] = vectors.reshape(len(table), -1)[part_rows]
                part_has_image = table.column("has_image").to_numpy(zero_copy_only=False)
                part_issues = table.column("issues").to_pylist()
                for store_row, part_row in zip(store_rows.tolist(), part_rows.tolist()):
                    has_image[store_row] = bool(part_has_image[part_row])
                    issues.extend({"id": ids[store_row], **issue} for issue in part_issues[part_row])
            for array in pooled.values():
                array.flush()
            del pooled
        return has_image, issues

    def _collect_garbage(self, manifest: dict) -> int:
        """Delete parts without live rows, older generations and temporaries of dead writers."""
        keep_parts = set(manifest["parts"])
        deleted = 0
        for path in (self.root / "parts").iterdir():
            if TEMP_MARKER in path.name or path.stem not in keep_parts:
                deleted += path.suffix == ".parquet"
                path.unlink(missing_ok=True)
        keep_files = set(manifest["files"].values())
        for path in self.root.iterdir():
            generated = schema.GENERATION_FILE.match(path.name) is not None
            if (generated or TEMP_MARKER in path.name) and path.name not in keep_files:
                path.unlink(missing_ok=True)
        return deleted


def _new_part_name() -> str:
    return f"part-{time.time_ns():x}-{uuid.uuid4().hex[:6]}"  # sorts by creation time


def _pending_table(pending: list, dims: dict, identity: dict) -> pa.Table:
    """Pending batches (and a leftover table) as one part-schema table."""
    table_schema = schema.part_schema(dims, identity)
    tables = [item if isinstance(item, pa.Table) else schema.part_table(*item, table_schema) for item in pending]
    return pa.concat_tables(tables).combine_chunks()
