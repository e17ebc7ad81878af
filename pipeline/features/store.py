"""The feature store: Parquet part files of CLIP features, content-addressed, with a contiguous mirror.

Layout of a store directory::

    manifest.json                  committed last: encoder identity, dims, parts, the current generation's files
    parts/part-<id>.parquet        the store of record: one row per encoded item (see ``part_schema``)
    parts/part-<id>.arrow          its mirror: the same table as uncompressed Arrow IPC, one record batch
    rows-<gen>.parquet             store row -> (id, content key, part, row in part, has_image)
    text_pooled-<gen>.npy          [N, D] float16, contiguous, so ``pooled()`` is one memory map
    image_pooled-<gen>.npy         [N, D] float16
    issues-<gen>.parquet           every recorded input problem of the live items

Why a mirror: Parquet pages are encoded and compressed, so a reader would have to decode a whole column
chunk to reach one row. In the uncompressed Arrow IPC copy each feature column of a part is one contiguous
float16 buffer at a known file offset, so ``take()`` copies exactly the selected rows, straight into the
output tensors (positioned reads, see ``_PartMirror``), and ``pooled()`` is a plain memory map: a
100k-entity store is never loaded whole into RAM (bench/features.md has the peak-RSS figures).
Disk cost (measured on 100k rows): the Parquet parts (zstd over byte-stream-split float16) take 0.85x the
raw float16 bytes and the mirror 1.0x, so a store takes about 1.87x its raw size, pooled mirrors included.
A missing mirror is rebuilt from its Parquet part.

Content addressing: a part row is keyed by its content key, hash(encoder identity, text, image digest).
A run reuses every row of every finished part whose key it needs: parts listed in the manifest and parts
left behind by a crashed run alike, so a crash resumes from the finished parts. Parts are written
atomically while encoding goes on; the manifest is replaced last, then parts without live rows and files of
older generations are deleted. Parts whose live rows fell under half are rewritten (compaction), so a store
refreshed many times stays near its live size. Rows that failed for a transient reason (``retry``) are
served but never reused. One writer at a time holds ``.lock``; readers take no lock and see either the old
or the new generation.

Reuse across stores: a writer given ``reuse_from`` (other stores' directories, e.g. the KB shards' stores)
first links their committed parts of the same encoder identity into its own ``parts/``: a hard link, so
no feature bytes are copied on one filesystem (a copy where the filesystem has no links). Their rows are
then reusable like its own, and the links it does not need are deleted with its garbage.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import mmap
import os
import re
import shutil
import time
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.errors import MELUserError
from pipeline.hashing import hash_strings
from pipeline.lake import TEMP_MARKER, atomic_path, write_text_atomic
from pipeline.locks import exclusive_lock

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHAPES_KEY = b"mel.feature_shapes"
ENCODER_KEY = b"mel.encoder"
FEATURE_COLUMNS = ("text_pooled", "text_tokens", "text_mask", "image_pooled", "image_tokens")
POOLED_KINDS = ("text", "image")
GENERATION_FILE = re.compile(r"^(rows|issues|text_pooled|image_pooled)-[0-9T]+-[0-9a-f]{8}\.(parquet|npy)$")
# Parquet encodes nested lists at ~50-150 MB/s per thread (pyarrow releases the GIL): enough threads that a
# GPU producing ~250 MB/s of ViT-B-32 features does not wait on them, one on a small machine.
WRITER_THREADS = max(1, min(4, (os.cpu_count() or 1) // 4))
COMPACT_BELOW = 0.5
IOV_MAX = 1024  # buffers per preadv call (Linux)  # rewrite a part when fewer than this share of its rows are live
FLOAT_COLUMNS = ("text_pooled", "text_tokens", "image_pooled", "image_tokens")
PARQUET_OPTIONS = dict(  # float16 values: byte-stream-split + zstd saves ~15%; dictionaries and stats do not pay
    compression="zstd", use_dictionary=False, write_statistics=False,
    use_byte_stream_split=[f"{name}.list.element" for name in FLOAT_COLUMNS],
)
ISSUE_TYPE = pa.struct([("field", pa.string()), ("code", pa.string()), ("detail", pa.string()),
                        ("action", pa.string())])
ISSUES_SCHEMA = pa.schema([("id", pa.string()), ("field", pa.string()), ("code", pa.string()),
                           ("detail", pa.string()), ("action", pa.string())])

log = logging.getLogger(__name__)


def feature_shapes(dims: dict) -> dict[str, list[int]]:
    return {
        "text_pooled": [dims["D"]],
        "text_tokens": [dims["L"], dims["Wt"]],
        "text_mask": [dims["L"]],
        "image_pooled": [dims["D"]],
        "image_tokens": [dims["P1"], dims["Wv"]],
    }


def part_schema(dims: dict, identity: dict) -> pa.Schema:
    """One row per encoded item; token matrices flattened, their shapes in the schema metadata."""
    shapes = feature_shapes(dims)

    def fixed(name, value_type):
        size = int(np.prod(shapes[name]))
        return pa.field(name, pa.list_(pa.field("element", value_type, nullable=False), size), nullable=False)

    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("content_key", pa.string(), nullable=False),
            fixed("text_pooled", pa.float16()),
            fixed("text_tokens", pa.float16()),
            fixed("text_mask", pa.uint8()),
            fixed("image_pooled", pa.float16()),
            fixed("image_tokens", pa.float16()),
            pa.field("has_image", pa.bool_(), nullable=False),
            pa.field("retry", pa.bool_(), nullable=False),  # failed for a transient reason: never reused
            pa.field("issues", pa.list_(ISSUE_TYPE), nullable=False),
        ],
        metadata={SHAPES_KEY: json.dumps(shapes).encode(), ENCODER_KEY: json.dumps(identity, sort_keys=True).encode()},
    )


def store_fingerprint(ids: list[str], keys: list[str]) -> str:
    """Changes iff the id set or any item's content key changes (row order does not matter)."""
    return hash_strings(part for pair in sorted(zip(ids, keys)) for part in pair)


@dataclass
class EncodedBatch:
    """Encoder outputs for a batch, on the CPU, in the stored dtype."""

    text_pooled: np.ndarray  # [B, D]
    text_tokens: np.ndarray  # [B, L, Wt]
    text_mask: np.ndarray  # [B, L] uint8
    image_pooled: np.ndarray  # [B, D]
    image_tokens: np.ndarray  # [B, P1, Wv]
    has_image: np.ndarray  # [B] bool

    def __len__(self) -> int:
        return len(self.has_image)


# -- reading -------------------------------------------------------------------------------------


@dataclass
class FeatureBatch:
    """Features of selected store rows as torch tensors (float16 unless asked otherwise)."""

    text_pooled: torch.Tensor  # [n, D]
    text_tokens: torch.Tensor  # [n, L, Wt]
    text_mask: torch.Tensor  # [n, L] bool
    image_pooled: torch.Tensor  # [n, D]
    image_tokens: torch.Tensor  # [n, P1, Wv]
    has_image: torch.Tensor  # [n] bool

    def __len__(self) -> int:
        return self.has_image.shape[0]

    def to(self, device=None, dtype: torch.dtype | None = None) -> "FeatureBatch":
        """Move; ``dtype`` casts the float tensors only."""
        return FeatureBatch(**{
            f.name: getattr(self, f.name).to(device, dtype=dtype if getattr(self, f.name).is_floating_point() else None)
            for f in fields(self)
        })


class _PartMirror:
    """Where each feature column of a part's Arrow IPC mirror lies in the file, read with positioned reads.

    Why not a memory map: on kernels that cache files in large folios (Linux 6.x; here 6.18 with 8 MB
    read-ahead), touching one 25 KB row of a mapping maps about 1.6 MB into the process, so a mapped
    ``take`` of 4096 random rows of a 100k store measured 4.8 GB of RSS. ``os.preadv`` copies exactly the
    selected rows from the page cache into the output tensors and maps nothing.
    """

    def __init__(self, path: Path, shapes: dict[str, list[int]]):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)  # held open: the file stays readable if a writer deletes it
        self.offset, self.row_bytes = {}, {}
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            source = pa.py_buffer(mapped)
            batch = pa.ipc.open_file(source).get_batch(0)  # parses metadata only; no feature page is read
            if pa.ipc.open_file(source).num_record_batches != 1:
                raise ValueError(f"{path} holds several record batches, expected 1")
            self.rows = batch.num_rows
            for name in FEATURE_COLUMNS:
                values = batch.column(name).values
                width = values.type.byte_width
                self.offset[name] = values.buffers()[1].address - source.address + values.offset * width
                self.row_bytes[name] = int(np.prod(shapes[name])) * width
            del batch, values, source  # release the exported buffer before the map closes

    def read(self, name: str, rows: np.ndarray, out: np.ndarray, out_rows: np.ndarray) -> None:
        """Copy part rows ``rows`` of column ``name`` into ``out[out_rows]``; consecutive rows in one call."""
        size, start = self.row_bytes[name], self.offset[name]
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        runs = np.split(np.arange(len(rows)), np.flatnonzero(np.diff(ordered) != 1) + 1)
        for run in runs:
            for chunk in np.array_split(run, -(-len(run) // IOV_MAX)):
                buffers = [out[i] for i in out_rows[order[chunk]]]
                offset = start + int(ordered[chunk[0]]) * size
                if os.preadv(self.fd, buffers, offset) != size * len(buffers):
                    raise MELUserError(f"The feature store mirror {self.path} is truncated; delete it to rebuild.")

    def close(self) -> None:
        os.close(self.fd)


def _mirror_table(root: Path, name: str) -> pa.Table:
    """A part's mirror as a memory-mapped Arrow table, for the writer's bulk reads."""
    return pa.ipc.open_file(pa.memory_map(str(_ensure_mirror(root, name)), "r")).read_all()


def _part_paths(root: Path, name: str) -> tuple[Path, Path]:
    return root / "parts" / f"{name}.parquet", root / "parts" / f"{name}.arrow"


def _ensure_mirror(root: Path, name: str) -> Path:
    parquet, mirror = _part_paths(root, name)
    if not mirror.is_file():
        _write_mirror(pq.read_table(parquet), mirror)
    return mirror


def _write_mirror(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as temp:
        with pa.ipc.new_file(str(temp), table.schema) as writer:
            writer.write_table(table.combine_chunks(), max_chunksize=max(len(table), 1))


class FeatureStore:
    """Read access to a committed feature store: ids, pooled matrices, row subsets as tensors."""

    def __init__(self, root: Path, manifest: dict):
        self.root = root
        self.manifest = manifest
        files = manifest["files"]
        rows = pq.read_table(root / files["rows"])
        self.ids = np.asarray(rows.column("id").to_pylist(), dtype=str)
        self.content_keys = rows.column("content_key")
        self.has_image = rows.column("has_image").to_numpy(zero_copy_only=False).astype(bool)
        self._part_index = rows.column("part").to_numpy().astype(np.int64)
        self._part_row = rows.column("part_row").to_numpy().astype(np.int64)
        self._pooled = {kind: np.load(root / files[f"{kind}_pooled"], mmap_mode="r") for kind in POOLED_KINDS}
        shapes = feature_shapes(self.dims)
        self._mirrors = [_PartMirror(_ensure_mirror(root, name), shapes) for name in manifest["parts"]]
        self._row_of: dict[str, int] | None = None

    @classmethod
    def open(cls, path: Path | str) -> "FeatureStore":
        """Open the committed store at ``path``; MELUserError when it is missing or incomplete."""
        root = Path(path)
        for attempt in range(3):  # a writer may replace the generation between reading the manifest and its files
            manifest = _read_manifest(root)
            if manifest is None:
                raise MELUserError(f"No feature store at {root}: materialize the features asset first.")
            missing = _missing_files(root, manifest)
            if not missing:
                try:
                    return cls(root, manifest)
                except FileNotFoundError:
                    missing = _missing_files(root, manifest) or ["a file"]
            if _read_manifest(root) == manifest or attempt == 2:
                raise MELUserError(
                    f"The feature store at {root} is incomplete ({missing[0]} is missing); re-materialize it."
                )
        raise AssertionError("unreachable")

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r}, rows={len(self)}, encoder={self.encoder['arch']})"

    @property
    def encoder(self) -> dict:
        return self.manifest["encoder"]

    @property
    def dims(self) -> dict:
        return self.manifest["dims"]

    @property
    def recipe(self) -> dict:
        """How the items' texts and images were built (kind, text template, description source)."""
        return self.manifest["recipe"]

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def issues(self) -> pa.Table:
        """One row per recorded input problem of a live item: id, field, code, detail, action."""
        return pq.read_table(self.root / self.manifest["files"]["issues"])

    def row_of(self, ids) -> np.ndarray:
        if self._row_of is None:
            self._row_of = {item: row for row, item in enumerate(self.ids.tolist())}
        ids = [ids] if isinstance(ids, str) else list(ids)
        missing = [item for item in ids if item not in self._row_of]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise KeyError(f"{len(missing)} id(s) not in the feature store {self.root}: {shown}")
        return np.fromiter((self._row_of[item] for item in ids), dtype=np.int64, count=len(ids))

    def pooled(self, kind: str) -> np.ndarray:
        """[N, D] float16, memory-mapped (read-only): pages are read from disk only when touched."""
        if kind not in POOLED_KINDS:
            raise ValueError(f"kind must be one of {POOLED_KINDS}, not {kind!r}")
        return self._pooled[kind]

    def take(self, rows, dtype: torch.dtype | None = None) -> FeatureBatch:
        """The features of ``rows`` (any order, repeats allowed); copies only those rows."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for a store of {len(self)} rows")
        rows = rows % max(len(self), 1)
        shapes = feature_shapes(self.dims)
        out = {name: np.empty((len(rows), *shapes[name]), dtype=np.uint8 if name == "text_mask" else np.float16)
               for name in FEATURE_COLUMNS}
        parts, local = self._part_index[rows], self._part_row[rows]
        order = np.argsort(parts, kind="stable")
        starts = np.flatnonzero(np.r_[True, parts[order][1:] != parts[order][:-1]]) if len(rows) else []
        for start, end in zip(starts, list(starts[1:]) + [len(rows)]):
            selected = order[start:end]
            mirror = self._mirrors[parts[selected[0]]]
            for name in FEATURE_COLUMNS:
                mirror.read(name, local[selected], out[name], selected)
        tensors = {name: torch.from_numpy(value) for name, value in out.items()}
        tensors["text_mask"] = tensors["text_mask"].bool()
        batch = FeatureBatch(**tensors, has_image=torch.from_numpy(self.has_image[rows].copy()))
        return batch.to(dtype=dtype) if dtype is not None else batch

    def disk_bytes(self) -> dict[str, int]:
        """Bytes on disk: the Parquet parts, their mirrors, and everything in total."""
        sizes = Counter()
        for path in self.root.rglob("*"):
            if path.is_file():
                kind = "parquet_parts" if path.suffix == ".parquet" and path.parent.name == "parts" else (
                    "mirror" if path.suffix in (".arrow", ".npy") else "other")
                sizes[kind] += path.stat().st_size
        return {"parquet_parts": sizes["parquet_parts"], "mirror": sizes["mirror"], "total": sum(sizes.values())}


def _missing_files(root: Path, manifest: dict) -> list[str]:
    names = [*manifest["files"].values()] + [f"parts/{part}.parquet" for part in manifest["parts"]]
    return [name for name in names if not (root / name).is_file()]


def _read_manifest(root: Path) -> dict | None:
    path = root / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT_VERSION:
        raise MELUserError(f"The feature store at {root} has format {manifest.get('format')}, "
                           f"this code reads format {FORMAT_VERSION}; delete it to rebuild.")
    return manifest


# -- writing -------------------------------------------------------------------------------------


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
        self.parts_linked = sum(_link_committed_parts(source, self.root, self.identity, self.logger)
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
                if metadata.get(ENCODER_KEY, b"").decode() != self.identity_json:
                    continue
                table = pq.read_table(parquet, columns=["content_key", "retry"])
            except (OSError, pa.ArrowException) as error:
                self.logger.warning(f"Ignoring unreadable feature part {parquet} ({error}); it will be deleted.")
                continue
            self.part_sizes[parquet.stem] = len(table)
            if self.dims is None:
                self.dims = _dims_from_shapes(json.loads(metadata[SHAPES_KEY]))
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
        shapes = feature_shapes(self.dims)
        row_bytes = sum(int(np.prod(shape)) for shape in shapes.values()) * 2
        return max(64, (64 << 20) // row_bytes)

    def add(self, ids: list[str], keys: list[str], encoded: EncodedBatch, retry: list[bool],
            issues: list[list[dict]]) -> None:
        self._pending.append((ids, keys, encoded, retry, issues))
        self._pending_rows += len(ids)
        while self._pending_rows >= self.part_rows:
            self._flush(self.part_rows)

    def flush(self) -> None:
        if self._pending_rows:
            self._flush(self._pending_rows)

    def _flush(self, rows: int) -> None:
        """Write the first ``rows`` pending rows as a part, in the background."""
        table = _rows_table(self._pending, self.dims, self.identity)
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
        parquet, mirror = _part_paths(self.root, name)
        _write_mirror(table, mirror)  # first: a part whose Parquet exists always has its mirror
        with atomic_path(parquet) as temp:
            pq.write_table(table, temp, **PARQUET_OPTIONS)

    def _wait_for_writes(self, keep: int = 0) -> None:
        while len(self._writes) > keep:
            self._writes.pop(0).result()

    # -- committing
    def commit(self, ids: list[str], keys: list[str], provenance: dict | None = None) -> CommitResult:
        """Make ``ids`` (with their content keys, all encoded by now) the store's content."""
        self.flush()
        self._wait_for_writes()
        fingerprint = store_fingerprint(ids, keys)
        layout = hash_strings([self.identity_json, json.dumps(self.recipe, sort_keys=True), *ids, *keys])
        current = _read_manifest(self.root)
        unchanged = current and current.get("layout") == layout and not _missing_files(self.root, current)
        if unchanged and self.parts_written == 0:
            return CommitResult(False, fingerprint, len(ids), 0, 0, current["issues_by_code"])

        locations = [self.location[key] for key in keys]
        locations = self._compact(locations)
        parts = sorted({part for part, _ in locations})
        part_index = {name: i for i, name in enumerate(parts)}
        generation = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        files = {"rows": f"rows-{generation}.parquet", "issues": f"issues-{generation}.parquet",
                 **{f"{kind}_pooled": f"{kind}_pooled-{generation}.npy" for kind in POOLED_KINDS}}
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
            pq.write_table(pa.Table.from_pylist(issues, schema=ISSUES_SCHEMA), temp, compression="zstd")
        manifest = {
            "format": FORMAT_VERSION,
            "encoder": self.identity,
            "dims": self.dims,
            "shapes": feature_shapes(self.dims),
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
        write_text_atomic(self.root / MANIFEST, json.dumps(manifest, indent=1))
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
            tables.append(_mirror_table(self.root, part).take(rows))
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
                "text": np.lib.format.open_memmap(text_temp, "w+", np.float16, (len(ids), self.dims["D"])),
                "image": np.lib.format.open_memmap(image_temp, "w+", np.float16, (len(ids), self.dims["D"])),
            }
            for part in parts:
                table = _mirror_table(self.root, part)
                store_rows = np.asarray(rows_by_part[part])
                part_rows = np.asarray([locations[i][1] for i in store_rows])
                for kind in POOLED_KINDS:
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
            generated = GENERATION_FILE.match(path.name) is not None
            if (generated or TEMP_MARKER in path.name) and path.name not in keep_files:
                path.unlink(missing_ok=True)
        return deleted


def _link_committed_parts(source: Path, root: Path, identity: dict, logger) -> int:
    """Link the committed parts of the store at `source` written by `identity` into `root`'s parts; how many."""
    try:
        manifest = _read_manifest(source)
    except (OSError, ValueError, MELUserError) as error:
        logger.warning(f"Not reusing the feature store at {source}: {error}")
        return 0
    if manifest is None or manifest.get("encoder") != identity:
        return 0  # not committed yet, or another encoder: its rows could not be reused anyway
    linked = 0
    for name in manifest["parts"]:
        (source_parquet, source_mirror), (parquet, mirror) = _part_paths(source, name), _part_paths(root, name)
        if parquet.is_file():
            continue
        try:
            if source_mirror.is_file():  # the mirror first: a part whose Parquet exists has its mirror
                _link_or_copy(source_mirror, mirror)
            _link_or_copy(source_parquet, parquet)
            linked += 1
        except FileNotFoundError:  # that store's writer deleted the part meanwhile: its rows get encoded
            continue
    return linked


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except FileExistsError:
        pass
    except OSError:  # another filesystem, or one without hard links
        with atomic_path(target) as temp:
            shutil.copyfile(source, temp)


def _new_part_name() -> str:
    return f"part-{time.time_ns():x}-{uuid.uuid4().hex[:6]}"  # sorts by creation time


def _dims_from_shapes(shapes: dict) -> dict:
    return {"D": shapes["text_pooled"][0], "L": shapes["text_tokens"][0], "Wt": shapes["text_tokens"][1],
            "P1": shapes["image_tokens"][0], "Wv": shapes["image_tokens"][1]}


def _rows_table(pending: list, dims: dict, identity: dict) -> pa.Table:
    """Pending batches (and a leftover table) as one part-schema table."""
    schema = part_schema(dims, identity)
    tables = []
    for item in pending:
        if isinstance(item, pa.Table):
            tables.append(item)
            continue
        ids, keys, encoded, retry, issues = item
        columns = {
            "id": pa.array(ids, pa.string()),
            "content_key": pa.array(keys, pa.string()),
            **{name: _fixed_list(getattr(encoded, name), schema.field(name).type) for name in FEATURE_COLUMNS},
            "has_image": pa.array(encoded.has_image, pa.bool_()),
            "retry": pa.array(retry, pa.bool_()),
            "issues": pa.array(issues, pa.list_(ISSUE_TYPE)),
        }
        tables.append(pa.table(columns, schema=schema))
    return pa.concat_tables(tables).combine_chunks()


def _fixed_list(values: np.ndarray, list_type: pa.DataType) -> pa.Array:
    flat = np.ascontiguousarray(values).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, list_type.value_type), type=list_type)
