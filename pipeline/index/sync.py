"""Keeping the stored entity index in step with its vectors: load what is stored, sync or rebuild, commit.

Sync. Stored next to the index is a content key per entity: a digest of exactly the
vectors its index vector is made of. ``update_entity_index`` compares them with the
current feature store and removes/adds only what changed. It rebuilds from scratch when
sync would give a different index than a rebuild would: first build, other encoder, other
combination rule, the kind that ``auto`` picks changes, an explicit ``nlist`` changes, or
more than ``RETRAIN_FRACTION`` of the entities changed since the frozen statistics (the
mean image used for image-less entities, the IVF centroids) were computed. When the source's
fingerprint equals the one the stored index was synced with, nothing is read at all.

Each update saves a new generation and commits it (``EntityIndex.save``), so a reader sees either the
previous index or the new one. ``build_entity_index`` is the ``entity_index`` stage over the lake's entity
feature store; the trained retrieval index (``pipeline.training.retrieval``) and the benchmarks call
``update_entity_index`` with a directory and a ``VectorSource`` of their own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import catalog
from pipeline.errors import MELUserError
from pipeline.features.store import FeatureStore
from pipeline.index.faiss_index import (
    CONFIG_NAME,
    INDEX_FORMAT,
    EntityIndex,
    SyncCounts,
    VectorSource,
    as_source,
)
from pipeline.index.settings import IndexSettings
from pipeline.index.vectors import EntityScan, ItemVectors
from pipeline.lake import Lake
from pipeline.locks import exclusive_lock

RETRAIN_FRACTION = 0.25

log = logging.getLogger(__name__)


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
    gpu: bool = False  # whether faiss may use a GPU under the settings (IVF training; searches)


def build_entity_index(lake: Lake, settings: IndexSettings, *, logger=log) -> IndexReport:
    """The ``entity_index`` stage: the index at ``catalog.entity_index_dir`` brought up to date with the entity
    feature store (``catalog.entity_store_dir``) under the CLIP rule."""
    entities = ItemVectors.from_store(FeatureStore.open(catalog.entity_store_dir(lake)))
    return update_entity_index(entities, catalog.entity_index_dir(lake), settings, logger=logger)


def update_entity_index(entities: VectorSource | ItemVectors, directory: Path, settings: IndexSettings,
                        logger=log, what: str = "entity index") -> IndexReport:
    """Bring the index in ``directory`` up to date with ``entities``: nothing, a sync, or a rebuild.

    ``entities``: the entity feature store's vectors (``ItemVectors``, under the CLIP rule) or any
    ``VectorSource``. One writer at a time (a second run waits for the first); readers take no lock and see
    either the previous or the new generation.
    """
    gpu = settings.gpu()  # refuses use_gpu='always' without a GPU before any work
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(directory / ".lock", logger,
                        f"Another run is updating the {what} in {directory}; waiting for it to finish."):
        report = _update(as_source(entities), directory, settings, logger, what)
    report.gpu = gpu
    return report


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
