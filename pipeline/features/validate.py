"""Is a committed feature store fit to read? Shapes as its dims declare, and every value finite.

The extractor writes what the encoder returns; a NaN from a broken checkpoint or fp16 overflow, or a part
file from another encoder configuration, would otherwise surface far downstream as an index that silently
drops entities or a training loss of NaN. This reads the whole store once, part by part, and says which
rows and columns are wrong.

Shapes: the manifest's dims (D, L, Wt, P1, Wv) fix every column's shape (``feature_shapes``); the
manifest's own shape table, each part's Parquet and Arrow schemas (fixed-size lists, shape metadata) and the
pooled matrices must all agree with them. Finiteness: pooled vectors and token states of every row; the
image columns only of rows with an image (an image-less row holds zeros by design, but nothing reads them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.features import schema
from pipeline.features.store import FeatureStore

BATCH_ROWS = 1024
EXAMPLES = 10
IMAGE_COLUMNS = ("image_pooled", "image_tokens")


@dataclass
class StoreCheck:
    """What ``check_feature_store`` found; ``passed`` when there is nothing to report."""

    root: str
    rows: int
    dims: dict
    shape_problems: list[str] = field(default_factory=list)  # one sentence per file that disagrees
    non_finite_rows: dict[str, int] = field(default_factory=dict)  # column -> rows with NaN/Inf
    examples: list[dict] = field(default_factory=list)  # {id, column} of the first bad rows
    finite_checked: bool = True  # False when the shapes are wrong: the values cannot be located then

    @property
    def passed(self) -> bool:
        return not self.shape_problems and not any(self.non_finite_rows.values())

    def summary(self) -> str:
        if self.passed:
            return f"{self.rows} rows of {self.root}: every value finite, every shape as the dims {self.dims} declare."
        parts = []
        if self.shape_problems:
            parts.append(f"{len(self.shape_problems)} shape problem(s), first: {self.shape_problems[0]}")
        bad = {column: n for column, n in self.non_finite_rows.items() if n}
        if bad:
            parts.append("rows with NaN/Inf: " + ", ".join(f"{column} {n}" for column, n in bad.items()))
        return f"The feature store {self.root} ({self.rows} rows) is not fit to read: " + "; ".join(parts) + "."


def check_feature_store(store: FeatureStore) -> StoreCheck:
    check = StoreCheck(str(store.root), len(store), dict(store.dims))
    check.shape_problems = shape_problems(store)
    if check.shape_problems:
        check.finite_checked = False
        return check
    pooled_files = [f"{kind}_pooled.npy" for kind in schema.POOLED_KINDS]
    check.non_finite_rows = dict.fromkeys([*schema.FLOAT_COLUMNS, *pooled_files], 0)
    for start in range(0, len(store), BATCH_ROWS):
        rows = np.arange(start, min(start + BATCH_ROWS, len(store)))
        _count_non_finite(store, rows, check)
    return check


def shape_problems(store: FeatureStore) -> list[str]:
    """Every place where a stored shape differs from what the manifest's dims declare."""
    declared = schema.feature_shapes(store.dims)
    problems = []
    if "shapes" in store.manifest and store.manifest["shapes"] != declared:
        problems.append(f"manifest.json lists shapes {store.manifest['shapes']}, its dims give {declared}")
    for kind in schema.POOLED_KINDS:
        shape = tuple(store.pooled(kind).shape)
        if shape != (len(store), store.dims["D"]):
            problems.append(f"{store.manifest['files'][f'{kind}_pooled']} is {list(shape)}, "
                            f"expected [{len(store)}, {store.dims['D']}]")
    for part in store.manifest["parts"]:
        parquet, mirror = schema.part_paths(store.root, part)
        problems += _schema_problems(f"parts/{parquet.name}", pq.read_schema(parquet), declared)
        with pa.memory_map(str(mirror), "r") as source:
            problems += _schema_problems(f"parts/{mirror.name}", pa.ipc.open_file(source).schema, declared)
    return problems


def _schema_problems(name: str, table_schema: pa.Schema, declared: dict) -> list[str]:
    problems = []
    recorded = json.loads((table_schema.metadata or {}).get(schema.SHAPES_KEY, b"null"))
    if recorded != declared:
        problems.append(f"{name} records shapes {recorded}, the manifest's dims give {declared}")
    for column in schema.FEATURE_COLUMNS:
        field_type = table_schema.field(column).type if column in table_schema.names else None
        size = getattr(field_type, "list_size", None)
        if size != int(np.prod(declared[column])):
            problems.append(f"{name} stores {column} as {size} values per row, expected "
                            f"{int(np.prod(declared[column]))} ({declared[column]})")
    return problems


def _count_non_finite(store: FeatureStore, rows: np.ndarray, check: StoreCheck) -> None:
    batch = store.take(rows)
    has_image = batch.has_image.numpy()
    for column in schema.FLOAT_COLUMNS:
        bad = ~torch.isfinite(schema.column_values(batch, column)).flatten(1).all(dim=1).numpy()
        if column in IMAGE_COLUMNS:
            bad &= has_image
        _record(check, store, column, rows[bad])
    for kind in schema.POOLED_KINDS:  # the contiguous copies that the index reads
        pooled = np.asarray(store.pooled(kind)[rows[0]:rows[-1] + 1])
        bad = ~np.isfinite(pooled).all(axis=1)
        if kind == "image":
            bad &= has_image
        _record(check, store, f"{kind}_pooled.npy", rows[bad])


def _record(check: StoreCheck, store: FeatureStore, column: str, bad_rows: np.ndarray) -> None:
    check.non_finite_rows[column] += len(bad_rows)
    for row in bad_rows[:max(0, EXAMPLES - len(check.examples))]:
        check.examples.append({"id": str(store.ids[row]), "column": column})
