"""The FAISS entity index: build, keep in sync with the entity features, save, load, search.

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

Sync. Stored next to the index is a content key per entity: a digest of exactly the
vectors its index vector is made of. ``update_entity_index`` compares them with the
current feature store and removes/adds only what changed. It rebuilds from scratch when
sync would give a different index than a rebuild would: first build, other encoder, other
combination rule, the kind that ``auto`` picks changes, an explicit ``nlist`` changes, or
more than ``RETRAIN_FRACTION`` of the entities changed since the frozen statistics (the
mean image used for image-less entities, the IVF centroids) were computed.

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
import logging
import math
import shutil
import time
import uuid
from collections.abc import Callable
from typing import Protocol
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.errors import MELUserError
from pipeline.hashing import hash_bytes, hash_strings
from pipeline.index.vectors import BATCH_ROWS, ClipEntityVectors, EntityScan, ItemVectors
from pipeline.lake import Lake, atomic_path, write_text_atomic
from pipeline.locks import exclusive_lock

INDEX_FORMAT = "2"  # 2: fill.npy (was image_fill.npy), any VectorSource
KINDS = ("auto", "flat", "ivf")
GPU_CHOICES = ("auto", "always", "never")
RETRAIN_FRACTION = 0.25
TRAIN_POINTS_PER_LIST = 50  # faiss warns below 39 training points per centroid
CONFIG_NAME = "index.json"
TRAIN_SEED = 0

log = logging.getLogger(__name__)


def index_dir(lake: Lake) -> Path:
    """Where the entity index lives in the lake."""
    return lake.root / "index" / "entity"


@dataclass(frozen=True)
class IndexSettings:
    """How the entity index is built and searched (checked on creation)."""

    kind: str = "auto"
    flat_max_entities: int = 200_000
    nlist: int = 0  # 0 = choose from the number of entities
    nprobe: int = 32
    use_gpu: str = "auto"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise MELUserError(f"The index setting kind={self.kind!r} is not one of {', '.join(KINDS)}.")
        if self.use_gpu not in GPU_CHOICES:
            raise MELUserError(f"The index setting use_gpu={self.use_gpu!r} is not one of {', '.join(GPU_CHOICES)}.")
        for name in ("flat_max_entities", "nprobe"):
            if getattr(self, name) < 1:
                raise MELUserError(f"The index setting {name}={getattr(self, name)} must be at least 1.")
        if self.nlist < 0:
            raise MELUserError(f"The index setting nlist={self.nlist} must be 0 (automatic) or positive.")

    def kind_for(self, entities: int) -> str:
        if self.kind != "auto":
            return self.kind
        return "flat" if entities <= self.flat_max_entities else "ivf"

    def nlist_for(self, entities: int) -> int:
        """About 4 sqrt(N) lists (faiss's guideline), capped so each gets enough training points."""
        if self.nlist:
            if self.nlist > entities:
                raise MELUserError(
                    f"The index setting nlist={self.nlist} exceeds the {entities} usable entities; lower it or set 0.")
            return self.nlist
        return max(1, min(round(4 * math.sqrt(entities)), entities // TRAIN_POINTS_PER_LIST))

    def gpu(self) -> bool:
        available = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
        if self.use_gpu == "always" and not available:
            raise MELUserError("The index setting use_gpu='always' needs faiss with GPU support (faiss-gpu) "
                               "and a visible GPU; neither is present here.")
        return available and self.use_gpu != "never"


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
            return _gpu_searcher(self.index, self.kind, nprobe)
        if self.kind == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = nprobe
            return self.index.search
        return _matmul_searcher(self.index)

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


def read_index_config(directory: Path) -> dict | None:
    """The committed index's config (encoder, dims, fingerprint, generation), or None when there is none:
    what a reader needs to know about the index without loading it."""
    path = Path(directory) / CONFIG_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


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
    clustering = faiss.index_cpu_to_gpu(_gpu_resources(), 0, faiss.IndexFlatIP(dim)) if use_gpu else None
    index.clustering_index = clustering
    index.train(vectors)
    index.clustering_index = None
    sample_key = hash_strings(scan.keys[int(i)] for i in sample)
    return index, sample_key


EXACT_QUERY_CHUNK = 256  # queries per matrix product: 256 x 200k entities of float32 scores = 200 MB


def _matmul_searcher(index: faiss.Index):
    """Exact top-k on the CPU over the flat index's own vectors (a view, not a copy), by `exact_search`."""
    flat = faiss.downcast_index(index.index)
    if flat.ntotal == 0:
        return index.search
    vectors = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
    ids = faiss.vector_to_array(index.id_map)

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, positions = exact_search(vectors, queries, k)
        return scores, np.where(positions >= 0, ids[np.maximum(positions, 0)], -1)

    search.index = index  # the vectors are a view of the index's memory: keep it alive with the searcher
    return search


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k inner products of `queries` [n, d] against `vectors` [N, d] float32: (scores [n, k], rows [n, k];
    -1 past N), as FAISS returns them. One matrix product and a top-k per chunk of queries (torch): FAISS's
    flat search gives the same rows, 2.9x slower here for k = 100 of 100k (bench/retrieval_search.py)."""
    matrix = torch.from_numpy(np.ascontiguousarray(vectors, np.float32))
    found = min(k, len(matrix))
    scores = np.full((len(queries), k), -np.finfo(np.float32).max, dtype=np.float32)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(queries), EXACT_QUERY_CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(queries[start:start + EXACT_QUERY_CHUNK], np.float32))
        top, positions = (chunk @ matrix.T).topk(found, dim=1)
        scores[start:start + len(chunk), :found] = top.numpy()
        rows[start:start + len(chunk), :found] = positions.numpy()
    return scores, rows


_GPU_RESOURCES = None


def _gpu_resources():
    global _GPU_RESOURCES
    if _GPU_RESOURCES is None:
        _GPU_RESOURCES = faiss.StandardGpuResources()
    return _GPU_RESOURCES


def _gpu_searcher(index: faiss.Index, kind: str, nprobe: int):
    if kind == "ivf":
        gpu_index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)
        faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", nprobe)
        return gpu_index.search
    # Clone the flat storage alone and map its row numbers to KB indices on the CPU:
    # this does not depend on the GPU cloner's support for IndexIDMap2.
    id_map = faiss.vector_to_array(index.id_map)
    gpu_flat = faiss.index_cpu_to_gpu(_gpu_resources(), 0, faiss.downcast_index(index.index))

    def search(queries: np.ndarray, k: int):
        scores, positions = gpu_flat.search(queries, k)
        return scores, np.where(positions >= 0, id_map[positions], -1)

    return search


# -- the stage -----------------------------------------------------------------------------

@dataclass
class IndexReport:
    action: str  # built | synced | unchanged
    reason: str  # why it was (re)built, or what sync did
    kind: str
    entities: int
    dim: int
    nlist: int | None
    fingerprint: str
    directory: str
    encoder: dict
    counts: SyncCounts = field(default_factory=SyncCounts)
    problems: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def update_entity_index(entities: VectorSource | ItemVectors, directory: Path, settings: IndexSettings,
                        logger=log, what: str = "entity index") -> IndexReport:
    """Bring the index in ``directory`` up to date with ``entities``: nothing, a sync, or a rebuild.

    ``entities``: the entity feature store's vectors (``ItemVectors``, under the CLIP rule) or any
    ``VectorSource``. One writer at a time (a second run waits for the first); readers take no lock and see
    either the previous or the new generation.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(directory / ".lock", logger,
                        f"Another run is updating the {what} in {directory}; waiting for it to finish."):
        return _update(as_source(entities), directory, settings, logger, what)


def _update(source: VectorSource, directory: Path, settings: IndexSettings, logger, what: str) -> IndexReport:
    started = time.perf_counter()
    stored = _load_stored(directory, logger)
    if stored is not None and source.fingerprint and stored.config.get("source_fingerprint") == source.fingerprint \
            and _rebuild_reason(stored, source, settings, stored.config["entities"], 0) is None:
        logger.info(f"Entity vectors unchanged (fingerprint {source.fingerprint[:12]}): keeping the stored {what}.")
        return _report(stored, "unchanged", "entity vectors unchanged", directory, started,
                       SyncCounts(unchanged=len(stored)))

    scan = source.scan(stored)
    changed = _changed_count(stored, scan) if stored is not None else 0
    reason = _rebuild_reason(stored, source, settings, len(scan.keys), changed)
    if reason is not None:
        logger.info(f"Building the {what} from scratch: {reason}.")
        index = EntityIndex.build(source, scan, settings)
        index.save(directory)
        return _report(index, "built", reason, directory, started, SyncCounts(added=len(index)))

    problems_before = stored.problems
    counts = stored.sync(source, scan)
    if changed or stored.problems != problems_before:
        stored.save(directory)
    else:  # the same vectors from a re-written store: remember its fingerprint for the fast path
        stored.commit_config(directory)
    logger.info(f"The {what} synced: {counts.added} added, {counts.removed} removed, "
                f"{counts.updated} updated, {counts.unchanged} unchanged.")
    return _report(stored, "synced", "incremental update", directory, started, counts)


def _load_stored(directory: Path, logger) -> EntityIndex | None:
    if not (directory / CONFIG_NAME).is_file():
        return None
    try:
        return EntityIndex.load(directory)
    except MELUserError as error:
        logger.warning(f"{error} Rebuilding it.")
        return None


def _changed_count(stored: EntityIndex, scan: EntityScan) -> int:
    stored_keys, current = stored.keys, scan.keys
    return len(stored_keys.keys() ^ current.keys()) + sum(
        1 for i in stored_keys.keys() & current.keys() if stored_keys[i] != current[i])


def _rebuild_reason(stored: EntityIndex | None, source: VectorSource, settings: IndexSettings,
                    entities: int, changed: int) -> str | None:
    """Why a sync would not give the index a rebuild gives (None: sync is enough)."""
    if stored is None:
        return "no usable index stored yet"
    config = stored.config
    if config.get("format") != INDEX_FORMAT:
        return "the stored index was written by another version of this stage"
    for key, value in source.identity.items():
        if config.get(key) != value:
            return _identity_change(key, config.get(key), value)
    kind = settings.kind_for(entities)
    if kind != stored.kind:
        return f"the index kind changes from {stored.kind} to {kind} ({entities} entities)"
    if kind == "ivf" and settings.nlist != config["nlist_setting"]:
        return f"the nlist setting changed from {config['nlist_setting']} to {settings.nlist}"
    since_training = config["changed_since_training"] + changed
    if since_training > RETRAIN_FRACTION * config["trained_on"]["entities"]:
        return (f"{since_training} entities changed since the index statistics were computed over "
                f"{config['trained_on']['entities']} (more than {RETRAIN_FRACTION:.0%})")
    return None


def _identity_change(key: str, stored, current) -> str:
    if key == "encoder":
        return "the entity features come from another encoder than the stored index"
    if key == "dim":
        return f"the feature dimension changed from {stored} to {current}"
    if key == "combination_version":
        return "the stored index was written by another version of this stage"
    return f"the {key.replace('_', ' ')} changed since the stored index was built"


def _report(index: EntityIndex, action: str, reason: str, directory: Path, started: float,
            counts: SyncCounts) -> IndexReport:
    config = index.config
    return IndexReport(action, reason, index.kind, len(index), config["dim"], config["nlist"],
                       index.fingerprint, str(directory), config["encoder"], counts, index.problems,
                       time.perf_counter() - started)
