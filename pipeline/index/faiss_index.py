"""The FAISS entity index: build, sync in place, save, load, search (when to sync or rebuild: ``sync``).

Kinds. Up to ``flat_max_entities`` usable entities the index is exact: ``IndexIDMap2``
around ``IndexFlatIP``; batched exact search runs as one matrix product (BLAS) and a top-k over
the index's own vectors, which on a CPU stays competitive with IVF up to a few hundred thousand
entities (bench/faiss.md, bench/retrieval.md), and
candidate recall is the ceiling of linking accuracy. Past it, IVF: inner product, spherical
k-means centroids trained on a fixed-seed sample of ``TRAIN_POINTS_PER_LIST * nlist``
entities, ``nlist`` about 4 sqrt(N) unless set, ``nprobe`` chosen at search time. Its lists
store float16 (``IndexIVFScalarQuantizer`` QT_fp16): the features are float16 in the store
already, so nothing measurable is lost, and an IVF scan is memory-bound, so halving the
bytes read per query made it 2-3 times faster than ``IndexIVFFlat`` here. HNSW is not
offered: it cannot ``remove_ids``, and an index that must be rebuilt whenever one entity
changes defeats the point of keeping it in sync. Product quantisation is not offered either:
a 160k-entity KB (the largest public MEL KB) takes 0.3 GB in float16, so compressing further
would cost recall for no need.

Ids are KB indices everywhere (``IndexIDMap2`` for flat, IVF stores ids natively), so a
search answers KB indices directly and entities can be added or removed in place.

Sync. Stored next to the index is a content key per entity: a digest of exactly the vectors its
index vector is made of; ``EntityIndex.sync`` removes and adds only the entities whose key changed.

Storage. Each save writes a new generation folder (index.faiss, entities.parquet,
problems.parquet, fill.npy with the statistics frozen at the build; each file atomically) and
then commits it by atomically replacing ``index.json``, which names the generation. A crash at any point leaves the
previous ``index.json`` pointing at a complete previous generation. The previous
generation is kept so that a reader that loaded the old ``index.json`` a moment ago can
still open its files.

GPU. When faiss has GPU support and a GPU is present (``use_gpu="auto"``), IVF training
and searches run on the GPU; the index is always kept and serialised on the CPU.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import atomic_path, write_text_atomic
from pipeline.errors import MELUserError
from pipeline.hashing import hash_bytes, hash_strings
from pipeline.index.search import gpu_resources, gpu_searcher, matmul_searcher
from pipeline.index.settings import TRAIN_POINTS_PER_LIST, IndexSettings
from pipeline.index.vectors import (
    BATCH_ROWS,
    ClipEntityVectors,
    EntityScan,
    ItemVectors,
)

INDEX_FORMAT = "2"  # 2: fill.npy (was image_fill.npy), any VectorSource
CONFIG_NAME = "index.json"
IDENTITY_KEYS = ("encoder", "dim", "fingerprint")  # what readers may know of a stored index without loading it
TRAIN_SEED = 0


class VectorSource(Protocol):
    """Where an index's entity vectors come from: the CLIP features (``vectors.ClipEntityVectors``) or a
    trained matcher (``pipeline.training.retrieval.TrainedEntityVectors``)."""

    source: str  # where the vectors come from, for messages
    fingerprint: str  # digest of the source's content ("" = unknown): unchanged means nothing to do
    index_dim: int
    usable: str  # what an entity needs to be indexed, for messages ("text vector")
    identity: dict  # what the vectors mean (encoder, rule, model...): when it changes the index is rebuilt

    def __len__(self) -> int: ...

    def scan(self, stored: "EntityIndex | None") -> EntityScan:
        """Content key of every usable entity and what is wrong with the others; ``stored`` is the index being
        synced (a source whose vectors are costly can skip the entities whose key it already holds)."""

    def fill(self, scan: EntityScan) -> np.ndarray:
        """The statistics frozen at a build (the CLIP rule's mean image), passed back to ``vectors``."""

    def vectors(self, rows: np.ndarray, fill: np.ndarray) -> np.ndarray:
        """Index vectors [n, index_dim] float32 of source rows."""


def as_source(entities: "VectorSource | ItemVectors") -> VectorSource:
    """The entity feature store's vectors (ItemVectors) under the CLIP rule, or a source as it is."""
    return ClipEntityVectors(entities) if isinstance(entities, ItemVectors) else entities


@dataclass
class SyncCounts:
    added: int = 0
    removed: int = 0
    updated: int = 0
    unchanged: int = 0


class EntityIndex:
    """A FAISS index over the combined entity vectors, with its content keys and config."""

    def __init__(self, index: faiss.Index, config: dict, keys: dict[int, str], problems: list[dict],
                 fill: np.ndarray):
        self.index = index
        self.config = config
        self.keys = keys
        self.problems = problems
        self.fill = fill  # the source's statistics frozen at the build (VectorSource.fill)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def kind(self) -> str:
        return self.config["kind"]

    @property
    def fingerprint(self) -> str:
        return self.config["fingerprint"]

    # -- build and sync --------------------------------------------------------------
    @classmethod
    def build(cls, source: VectorSource, scan: EntityScan, settings: IndexSettings) -> "EntityIndex":
        entities = len(scan.keys)
        if entities == 0:
            raise MELUserError(_no_usable_entities(source, scan))
        kind = settings.kind_for(entities)
        fill = source.fill(scan)
        config = {
            "format": INDEX_FORMAT,
            "kind": kind,
            "metric": "inner_product",
            **source.identity,
            "nlist_setting": settings.nlist,
            "nlist": None,
            "trained_on": {"entities": entities, "sample_key": None},
            "changed_since_training": 0,
        }
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(source.index_dim))
        else:
            nlist = settings.nlist_for(entities)
            index, sample_key = _trained_ivf(source, scan, fill, nlist, settings.gpu())
            config.update(nlist=nlist, trained_on={"entities": entities, "sample_key": sample_key})
        built = cls(index, config, {}, scan.problems, fill)
        built._add(source, scan, sorted(scan.keys))
        built._refresh_fingerprint(source)
        return built

    def sync(self, source: VectorSource, scan: EntityScan) -> SyncCounts:
        if not scan.keys:
            raise MELUserError(_no_usable_entities(source, scan))
        stored, current = self.keys, scan.keys
        before = len(stored)
        removed = sorted(stored.keys() - current.keys())
        added = sorted(current.keys() - stored.keys())
        updated = sorted(i for i in stored.keys() & current.keys() if stored[i] != current[i])
        if removed or updated:
            self.index.remove_ids(np.asarray(removed + updated, dtype=np.int64))
            for kb_index in removed + updated:
                del self.keys[kb_index]
        self._add(source, scan, added + updated)
        self.problems = scan.problems
        self.config["changed_since_training"] += len(removed) + len(added) + len(updated)
        self._refresh_fingerprint(source)
        return SyncCounts(len(added), len(removed), len(updated), before - len(removed) - len(updated))

    def _add(self, source: VectorSource, scan: EntityScan, kb_indices: list[int]) -> None:
        rows = np.asarray([scan.rows[i] for i in kb_indices], dtype=np.int64)
        order = np.argsort(rows)  # read the memory-mapped store front to back
        rows, ids = rows[order], np.asarray(kb_indices, dtype=np.int64)[order]
        for start in range(0, len(rows), BATCH_ROWS):
            vectors = source.vectors(rows[start:start + BATCH_ROWS], self.fill)
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids[start:start + BATCH_ROWS])
        for kb_index in kb_indices:
            self.keys[kb_index] = scan.keys[kb_index]

    def _refresh_fingerprint(self, source: VectorSource) -> None:
        """A digest of what the index contains, independent of how it got there (build or sync)."""
        parts = [INDEX_FORMAT, self.kind, json.dumps(source.identity, sort_keys=True), str(self.config["nlist"]),
                 str(self.config["trained_on"]["sample_key"]), hash_bytes(self.fill.tobytes())]
        for kb_index in sorted(self.keys):
            parts += [str(kb_index), self.keys[kb_index]]
        self.config.update(fingerprint=hash_strings(parts), entities=len(self.keys),
                           source_fingerprint=source.fingerprint)

    # -- search ------------------------------------------------------------------------
    def searcher(self, nprobe: int, use_gpu: bool) -> Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
        """A function (queries [n, 2D] float32, k) -> (scores [n, k], KB indices [n, k]; -1 = none)."""
        nprobe = min(nprobe, self.config["nlist"] or 1)
        if use_gpu:
            return gpu_searcher(self.index, self.kind, nprobe)
        if self.kind == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = nprobe
            return self.index.search
        return matmul_searcher(self.index)

    # -- storage -----------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory = Path(directory)
        generation = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        folder = directory / generation
        folder.mkdir(parents=True)
        with atomic_path(folder / "index.faiss") as temp:
            faiss.write_index(self.index, str(temp))
        ids = sorted(self.keys)
        _write_parquet(folder / "entities.parquet", pa.table(
            {"kb_index": pa.array(ids, pa.int64()), "content_key": [self.keys[i] for i in ids]}))
        _write_parquet(folder / "problems.parquet", pa.Table.from_pylist(self.problems, schema=PROBLEMS_SCHEMA))
        with atomic_path(folder / "fill.npy") as temp:
            with open(temp, "wb") as f:
                np.save(f, self.fill)
        previous = _committed_generation(directory)
        self.config.update(generation=generation, saved_at=dt.datetime.now(dt.timezone.utc).isoformat())
        self.commit_config(directory)
        _remove_old_generations(directory, keep={generation, previous})

    def commit_config(self, directory: Path) -> None:
        """Rewrite index.json only, for a change of bookkeeping with the same generation."""
        write_text_atomic(Path(directory) / CONFIG_NAME, json.dumps(self.config, indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: Path, asset: str = "entity_index") -> "EntityIndex":
        """The committed index in `directory`; `asset` (the asset that writes it) is named in messages."""
        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise MELUserError(f"There is no {asset.replace('_', ' ')} at {directory}; materialize {asset} first.")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            folder = directory / config["generation"]
            index = faiss.read_index(str(folder / "index.faiss"))
            entities = pq.read_table(folder / "entities.parquet").to_pydict()
            problems = pq.read_table(folder / "problems.parquet").to_pylist()
            fill = np.load(folder / "fill.npy")
        except (OSError, KeyError, ValueError, RuntimeError, pa.ArrowException) as error:
            raise MELUserError(f"The {asset} at {directory} is incomplete or corrupt ({error}); "
                               f"re-materialize {asset}.") from None
        keys = dict(zip(entities["kb_index"], entities["content_key"]))
        if len(keys) != index.ntotal:
            raise MELUserError(f"The {asset} at {directory} holds {index.ntotal} vectors but lists "
                               f"{len(keys)} entities; re-materialize {asset}.")
        return cls(index, config, keys, problems, fill)


PROBLEMS_SCHEMA = pa.schema([("kb_index", pa.int64()), ("problem", pa.string()), ("action", pa.string())])


def _write_parquet(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as temp:
        pq.write_table(table, temp)


def stored_index_identity(directory: Path) -> dict | None:
    """What the committed index in ``directory`` was built from and holds, without loading it: {"encoder",
    "dim", "fingerprint"}, or None when there is none (readers check it against their stores)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        return None
    config = json.loads(path.read_text(encoding="utf-8"))
    return {key: config.get(key) for key in IDENTITY_KEYS}


def _committed_generation(directory: Path) -> str | None:
    try:
        return json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8"))["generation"]
    except (OSError, ValueError, KeyError):
        return None


def _remove_old_generations(directory: Path, keep: set) -> None:
    for folder in directory.iterdir():
        if folder.is_dir() and folder.name not in keep:
            shutil.rmtree(folder, ignore_errors=True)


def _no_usable_entities(source: VectorSource, scan: EntityScan) -> str:
    if len(source) == 0:
        return f"The entity features at {source.source} hold no entities; the KB is empty."
    return (f"None of the {len(source)} entities in {source.source} has a usable {source.usable} "
            f"(first problem: {scan.problems[0]['problem']}); re-materialize entity_features.")


def _trained_ivf(source: VectorSource, scan: EntityScan, fill: np.ndarray, nlist: int,
                 use_gpu: bool) -> tuple[faiss.Index, str]:
    """An empty IVF index whose centroids are trained on a fixed-seed sample of entities."""
    dim = source.index_dim
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                          faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical = True  # unit-norm centroids: inner-product assignment stays a cosine
    kb_indices = np.asarray(sorted(scan.keys), dtype=np.int64)
    size = min(len(kb_indices), TRAIN_POINTS_PER_LIST * nlist)
    sample = np.sort(np.random.default_rng(TRAIN_SEED).choice(kb_indices, size=size, replace=False))
    rows = np.sort(np.asarray([scan.rows[int(i)] for i in sample], dtype=np.int64))
    vectors = np.ascontiguousarray(source.vectors(rows, fill), dtype=np.float32)
    # On a GPU only the k-means assignments run there; the index itself stays on the CPU.
    # (A Python reference keeps the GPU index alive while faiss holds a bare pointer to it.)
    clustering = faiss.index_cpu_to_gpu(gpu_resources(), 0, faiss.IndexFlatIP(dim)) if use_gpu else None
    index.clustering_index = clustering
    index.train(vectors)
    index.clustering_index = None
    sample_key = hash_strings(scan.keys[int(i)] for i in sample)
    return index, sample_key
