"""The feature store's reader: ids, pooled matrices and row subsets of a committed store (see ``schema``).

A store is read without a lock: a writer replaces the manifest last (``writer``), so a reader sees either
the old or the new generation, and ``FeatureStore.open`` retries when a generation is replaced under it.
``take`` copies exactly the selected rows out of the parts' Arrow IPC mirrors (``mirror``), ``pooled`` is a
memory map of the contiguous pooled matrices: a store of any size is never loaded whole into RAM.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from model.features import MMoEFeatures
from pipeline.errors import MELUserError
from pipeline.features.mirror import PartMirror, ensure_mirror
from pipeline.features.schema import (
    FEATURE_COLUMNS,
    POOLED_KINDS,
    STORED_FLOAT,
    feature_shapes,
    features_from_columns,
    missing_files,
    read_manifest,
)


class FeatureStore:
    """Read access to a committed feature store: ids, pooled matrices, row subsets as tensors."""

    def __init__(self, root: Path, manifest: dict):
        self.root = root
        self.manifest = manifest
        self.encoder: dict = manifest["encoder"]
        self.dims: dict = manifest["dims"]
        self.recipe: dict = manifest["recipe"]  # how the texts and images were built (kind, template, description)
        self.fingerprint: str = manifest["fingerprint"]
        files = manifest["files"]
        rows = pq.read_table(root / files["rows"])
        self.ids = np.asarray(rows.column("id").to_pylist(), dtype=str)
        self.content_keys = rows.column("content_key")
        self.has_image = rows.column("has_image").to_numpy(zero_copy_only=False).astype(bool)
        self._part_index = rows.column("part").to_numpy().astype(np.int64)
        self._part_row = rows.column("part_row").to_numpy().astype(np.int64)
        self._pooled = {kind: np.load(root / files[f"{kind}_pooled"], mmap_mode="r") for kind in POOLED_KINDS}
        shapes = feature_shapes(self.dims)
        self._mirrors = [PartMirror(ensure_mirror(root, name), shapes) for name in manifest["parts"]]
        self._row_of: dict[str, int] | None = None

    @classmethod
    def open(cls, path: Path | str) -> "FeatureStore":
        """Open the committed store at ``path``; MELUserError when it is missing or incomplete."""
        root = Path(path)
        for attempt in range(3):  # a writer may replace the generation between reading the manifest and its files
            manifest = read_manifest(root)
            if manifest is None:
                raise MELUserError(f"No feature store at {root}: materialize the features asset first.")
            missing = missing_files(root, manifest)
            if not missing:
                try:
                    return cls(root, manifest)
                except FileNotFoundError:
                    missing = missing_files(root, manifest) or ["a file"]
            if read_manifest(root) == manifest or attempt == 2:
                raise MELUserError(
                    f"The feature store at {root} is incomplete ({missing[0]} is missing); re-materialize it."
                )
        raise AssertionError("unreachable")

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r}, rows={len(self)}, encoder={self.encoder['arch']})"

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

    def take(self, rows, dtype: torch.dtype | None = None) -> MMoEFeatures:
        """The features of ``rows`` (any order, repeats allowed; float16 unless ``dtype`` says otherwise, the
        mask and has_image bool); copies only those rows."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for a store of {len(self)} rows")
        rows = rows % max(len(self), 1)
        shapes = feature_shapes(self.dims)
        out = {name: np.empty((len(rows), *shapes[name]), dtype=np.uint8 if name == "text_mask" else STORED_FLOAT)
               for name in FEATURE_COLUMNS}
        parts, local = self._part_index[rows], self._part_row[rows]
        order = np.argsort(parts, kind="stable")
        starts = np.flatnonzero(np.r_[True, parts[order][1:] != parts[order][:-1]]) if len(rows) else []
        for start, end in zip(starts, list(starts[1:]) + [len(rows)]):
            selected = order[start:end]
            mirror = self._mirrors[parts[selected[0]]]
            for name in FEATURE_COLUMNS:
                mirror.read(name, local[selected], out[name], selected)
        batch = features_from_columns(out, self.has_image[rows])
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
