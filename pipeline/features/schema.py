"""The feature store's format on disk: its files, the part schema and shapes, the manifest, and the one mapping
between the stored columns and the fields of ``model.MMoEFeatures``.

Layout of a store directory::

    manifest.json                  committed last: encoder identity, dims, parts, the current generation's files
    parts/part-<id>.parquet        the store of record: one row per encoded item (see ``part_schema``)
    parts/part-<id>.arrow          its mirror: the same table as uncompressed Arrow IPC, one record batch
    rows-<gen>.parquet             store row -> (id, content key, part, row in part, has_image)
    text_pooled-<gen>.npy          [N, D] float16, contiguous, so ``pooled()`` is one memory map
    image_pooled-<gen>.npy         [N, D] float16
    issues-<gen>.parquet           every recorded input problem of the live items

Columns keep the encoder's names on disk (``text_pooled``, ``image_pooled``, ...); in memory a batch of
features is a ``model.MMoEFeatures`` (``text_embeds``, ``image_embeds``, ...). ``FIELD_OF_COLUMN`` maps the
ones onto the others: ``part_table`` writes a batch as part rows, ``features_from_columns`` builds a batch
from column arrays, ``column_values`` reads one column's values from a batch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from model.features import MMoEFeatures
from pipeline.errors import MELUserError
from pipeline.hashing import hash_strings

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHAPES_KEY = b"mel.feature_shapes"
ENCODER_KEY = b"mel.encoder"
STORED_FLOAT = np.float16  # the float type of every stored feature
FIELD_OF_COLUMN = {  # stored column -> MMoEFeatures field
    "text_pooled": "text_embeds",
    "text_tokens": "text_tokens",
    "text_mask": "text_mask",
    "image_pooled": "image_embeds",
    "image_tokens": "image_tokens",
}
FEATURE_COLUMNS = tuple(FIELD_OF_COLUMN)
FLOAT_COLUMNS = ("text_pooled", "text_tokens", "image_pooled", "image_tokens")
POOLED_KINDS = ("text", "image")
GENERATION_FILE = re.compile(r"^(rows|issues|text_pooled|image_pooled)-[0-9T]+-[0-9a-f]{8}\.(parquet|npy)$")
PARQUET_OPTIONS = dict(  # float16 values: byte-stream-split + zstd saves ~15%; dictionaries and stats do not pay
    compression="zstd", use_dictionary=False, write_statistics=False,
    use_byte_stream_split=[f"{name}.list.element" for name in FLOAT_COLUMNS],
)
ISSUE_TYPE = pa.struct([("field", pa.string()), ("code", pa.string()), ("detail", pa.string()),
                        ("action", pa.string())])
ISSUES_SCHEMA = pa.schema([("id", pa.string()), ("field", pa.string()), ("code", pa.string()),
                           ("detail", pa.string()), ("action", pa.string())])


def feature_shapes(dims: dict) -> dict[str, list[int]]:
    """Per-row shape of every feature column, from the dims D, L, Wt, P1, Wv."""
    return {
        "text_pooled": [dims["D"]],
        "text_tokens": [dims["L"], dims["Wt"]],
        "text_mask": [dims["L"]],
        "image_pooled": [dims["D"]],
        "image_tokens": [dims["P1"], dims["Wv"]],
    }


def dims_from_shapes(shapes: dict) -> dict:
    """The dims that ``feature_shapes`` turns into ``shapes``."""
    return {"D": shapes["text_pooled"][0], "L": shapes["text_tokens"][0], "Wt": shapes["text_tokens"][1],
            "P1": shapes["image_tokens"][0], "Wv": shapes["image_tokens"][1]}


def batch_dims(features: MMoEFeatures) -> dict:
    """The dims of a flat batch of features."""
    return dims_from_shapes({column: column_values(features, column).shape[1:] for column in FEATURE_COLUMNS})


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


# -- columns <-> MMoEFeatures -------------------------------------------------------------------------


def column_values(features: MMoEFeatures, column: str) -> torch.Tensor:
    """The values that stored column ``column`` holds for ``features``."""
    return getattr(features, FIELD_OF_COLUMN[column])


def features_from_columns(columns: dict[str, np.ndarray], has_image: np.ndarray) -> MMoEFeatures:
    """A batch from arrays of every feature column (as stored: the mask in uint8) and the has_image flags."""
    tensors = {FIELD_OF_COLUMN[column]: torch.from_numpy(values) for column, values in columns.items()}
    tensors["text_mask"] = tensors["text_mask"].bool()
    return MMoEFeatures(**tensors, has_image=torch.from_numpy(np.asarray(has_image, dtype=bool)))


def part_table(ids: list[str], keys: list[str], features: MMoEFeatures, retry: list[bool],
               issues: list[list[dict]], schema: pa.Schema) -> pa.Table:
    """A part-schema table of one row per item of ``features`` (CPU tensors), in the stored types."""
    columns = {
        "id": pa.array(ids, pa.string()),
        "content_key": pa.array(keys, pa.string()),
        **{name: _fixed_list(column_values(features, name), schema.field(name).type) for name in FEATURE_COLUMNS},
        "has_image": pa.array(features.has_image.numpy(), pa.bool_()),
        "retry": pa.array(retry, pa.bool_()),
        "issues": pa.array(issues, pa.list_(ISSUE_TYPE)),
    }
    return pa.table(columns, schema=schema)


def _fixed_list(values: torch.Tensor, list_type: pa.DataType) -> pa.Array:
    flat = np.ascontiguousarray(values.numpy(), dtype=list_type.value_type.to_pandas_dtype()).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, list_type.value_type), type=list_type)


# -- files and the manifest ---------------------------------------------------------------------------


def part_paths(root: Path, name: str) -> tuple[Path, Path]:
    """A part's Parquet file and its Arrow IPC mirror."""
    return root / "parts" / f"{name}.parquet", root / "parts" / f"{name}.arrow"


def read_manifest(root: Path) -> dict | None:
    """The committed manifest of the store at ``root``; None before its first commit."""
    path = root / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT_VERSION:
        raise MELUserError(f"The feature store at {root} has format {manifest.get('format')}, "
                           f"this code reads format {FORMAT_VERSION}; delete it to rebuild.")
    return manifest


def missing_files(root: Path, manifest: dict) -> list[str]:
    """The files of ``manifest``'s generation and parts that are not in ``root``."""
    names = [*manifest["files"].values()] + [f"parts/{part}.parquet" for part in manifest["parts"]]
    return [name for name in names if not (root / name).is_file()]
