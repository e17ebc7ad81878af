"""Trained candidate retrieval: the matcher's retrieval vectors (`model/retrieval.py`) in a FAISS index.

The zero-shot index (`entity_index`: mean of CLIP's text and image cosines) caps what the reranker can reach:
an answer outside its top K is never scored. The trained matcher's score has a separable part, a dot product
of one vector per item, so its entities can be indexed and its mentions searched like any embedding:

    retrieval_index       `EntityIndex` over `TrainedEntityVectors` (ids = KB indices, flat or IVF by size,
                          synced in place, GPU when present), at `catalog.retrieval_index_dir`
                          (`build_retrieval_index`)
    retrieval_candidates  top-K per mention from it (the `mention_candidates` schema), which evaluation and
                          linking rerank (`find_retrieval_candidates`)

Both stages use the lake's current model (`trained.current_model`).

An entity's vector depends on its features and the model alone, so a new or changed entity is encoded and
added without retraining, and a new model rebuilds the index (its identity is part of the index's). A
mention or entity whose features or vector hold NaN/Inf is reported and left out, never ranked.

Reference gate: its scores depend on which items share a call, so vectors are computed in the public
evaluation's chunks (entities 6000, mentions 20, in store order); with the topk gate each item's vector is
its own.

Training rounds (`mine_candidates`): after a round, the same vectors of every entity and of the train/dev
mentions give each mention its trained top-K, from which the next round draws hard negatives and reranks dev.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch

from model import MMoEMatcher, retrieval_dim
from pipeline import catalog
from pipeline.errors import MELUserError
from pipeline.features.store import FeatureStore
from pipeline.hashing import hash_strings
from pipeline.index import EntityIndex, IndexReport, IndexSettings, find_candidates, update_entity_index
from pipeline.index.candidates import CandidatesReport
from pipeline.index.search import exact_search
from pipeline.index.vectors import EntityScan, entity_ids
from pipeline.lake import Lake
from pipeline.training.data import Mentions, load_features
from pipeline.training.encodings import REFERENCE_ENTITY_CHUNK, REFERENCE_MENTION_CHUNK
from pipeline.training.trained import current_model, load_matcher, model_identity

RETRIEVAL_VERSION = "1"  # bump when the vectors of a given model change
RETRIEVAL_RULE = "the trained matcher's separable score part: concat(text cls, image cls, cross ti, cross it)/sqrt(2n)"
ASSET = "retrieval_index"
ENCODE_BATCH = 256
NOT_FINITE = "retrieval vector has NaN/Inf values"

log = logging.getLogger(__name__)


def encode_vectors(matcher: MMoEMatcher, store: FeatureStore, rows: np.ndarray, device: torch.device,
                   is_entity: bool) -> tuple[np.ndarray, list[str | None]]:
    """Retrieval vectors [n, R] float32 of store `rows` (in that order) and per row what made it unusable
    (its features, or a non-finite vector; its vector row is then zeros)."""
    rows = np.asarray(rows, dtype=np.int64)
    reference = matcher.reference_mode
    chunk = (REFERENCE_ENTITY_CHUNK if is_entity else REFERENCE_MENTION_CHUNK) if reference else ENCODE_BATCH
    out = np.zeros((len(rows), retrieval_dim(matcher.config)), dtype=np.float32)
    problems: list[str | None] = [None] * len(rows)
    matcher.eval()
    with torch.inference_mode():
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            features, found = load_features(store, part, device, reference)
            usable = np.asarray([problem is None for problem in found])
            for i, problem in enumerate(found):
                if problem:
                    problems[start + i] = f"features: {problem}"
            if not usable.any():
                continue
            features = features.select(torch.as_tensor(usable, device=device))
            vectors = matcher.retrieval_vectors(matcher.encode_for_retrieval(features, is_entity)).float().cpu().numpy()
            finite = np.isfinite(vectors).all(axis=1)
            positions = start + np.flatnonzero(usable)
            out[positions[finite]] = vectors[finite]
            for position in positions[~finite].tolist():
                problems[position] = NOT_FINITE
    return out, problems


def _identity(matcher: MMoEMatcher, store: FeatureStore, model_identity: str) -> dict:
    dim = retrieval_dim(matcher.config)
    return {"encoder": store.encoder, "dim": dim, "index_dim": dim, "combination_rule": RETRIEVAL_RULE,
            "combination_version": RETRIEVAL_VERSION, "model": model_identity}


class TrainedEntityVectors:
    """The entity store's retrieval vectors under a trained matcher: a `VectorSource` for `EntityIndex`.

    `scan` encodes only the entities whose content key the stored index does not hold yet (new or changed
    features, or a first build) and keeps those vectors for `vectors`. Exact (flat) search is what these
    vectors are measured with: IVF over them needs a far larger nprobe than over CLIP's unit vectors for the
    same recall (bench/retrieval.md), so keep `flat_max_entities` above the KB's size where the GPU or the
    CPU allows.
    """

    usable = "retrieval vector"

    def __init__(self, matcher: MMoEMatcher, model_identity: str, store: FeatureStore, device: torch.device):
        self.matcher, self.store, self.device = matcher, store, device
        self.identity = _identity(matcher, store, model_identity)
        self.index_dim = self.identity["index_dim"]
        self.fingerprint = hash_strings([RETRIEVAL_VERSION, model_identity, store.fingerprint])
        self.source = f"{store.root} (retrieval vectors of model {model_identity[:12]})"
        self._computed: dict[int, np.ndarray] = {}  # store row -> vector
        self.encoded = 0

    def __len__(self) -> int:
        return len(self.store)

    def scan(self, stored: EntityIndex | None) -> EntityScan:
        model = self.identity["model"]
        kb, keys = trained_keys(self.store, model)
        known = stored.keys if stored is not None and stored.config.get("model") == model else {}
        todo = np.asarray([row for row, key in enumerate(keys) if known.get(int(kb[row])) != key], dtype=np.int64)
        vectors, problems = encode_vectors(self.matcher, self.store, todo, self.device, is_entity=True)
        self.encoded += len(todo)
        failed = {}
        for row, vector, problem in zip(todo.tolist(), vectors, problems):
            if problem:
                failed[row] = problem
            else:
                self._computed[row] = vector
        usable = [row for row in range(len(keys)) if row not in failed]
        return EntityScan(keys={int(kb[row]): keys[row] for row in usable}, rows={int(kb[row]): row for row in usable},
                          problems=[{"kb_index": int(kb[row]), "problem": problem, "action": "excluded"}
                                    for row, problem in sorted(failed.items())])

    def fill(self, scan: EntityScan) -> np.ndarray:
        return np.zeros(0, dtype=np.float32)  # nothing frozen at a build

    def vectors(self, rows: np.ndarray, fill: np.ndarray) -> np.ndarray:
        """The retrieval vectors [n, R] of store rows, encoding those that `scan` did not (a rebuild)."""
        missing = [row for row in rows.tolist() if row not in self._computed]
        if missing:
            vectors, _ = encode_vectors(self.matcher, self.store, np.asarray(missing), self.device, True)
            self.encoded += len(missing)
            for row, vector in zip(missing, vectors):
                self._computed[row] = vector
        if not len(rows):
            return np.zeros((0, self.index_dim), np.float32)
        return np.stack([self._computed[row] for row in rows.tolist()])


def trained_keys(store: FeatureStore, model_identity: str) -> tuple[np.ndarray, list[str]]:
    """(KB index, content key) per entity-store row under a model: a key changes iff the entity's features or
    the model do, which is all an entity's retrieval vector depends on."""
    kb = entity_ids(store.ids, str(store.root))
    return kb, [hash_strings([model_identity, key]) for key in store.content_keys.to_pylist()]


class TrainedMentionQueries:
    """The mention store's retrieval vectors under a trained matcher: a `QuerySource` for the trained index."""

    def __init__(self, matcher: MMoEMatcher, model_identity: str, store: FeatureStore, device: torch.device):
        self.matcher, self.store, self.device = matcher, store, device
        self.ids = np.asarray(store.ids)
        self.identity = {key: value for key, value in _identity(matcher, store, model_identity).items()
                         if key in ("encoder", "dim", "model")}
        self.fingerprint = hash_strings([RETRIEVAL_VERSION, model_identity, store.fingerprint])
        self.source = f"{store.root} (retrieval vectors of model {model_identity[:12]})"

    def queries(self, rows: np.ndarray):
        vectors, problems = encode_vectors(self.matcher, self.store, rows, self.device, is_entity=False)
        return vectors, np.asarray([problem is None for problem in problems], dtype=bool), problems


# -- the stages -----------------------------------------------------------------------------------------


@dataclass
class RetrievalIndexReport:
    index: IndexReport
    encoded: int  # entities whose vectors were computed (the others were already in the index)
    model: str  # model identity (trained.model_identity)
    device: str


def build_retrieval_index(lake: Lake, settings: IndexSettings, *, device: torch.device,
                          logger=log) -> RetrievalIndexReport:
    """The `retrieval_index` stage: bring the trained index up to date with the lake's current model and the
    entity store: built for a new model, synced for a changed KB (only new or changed entities are encoded),
    kept when neither changed."""
    model = current_model(lake)
    entities = FeatureStore.open(catalog.entity_store_dir(lake))
    matcher = load_matcher(model, None, entities, device, logger)
    identity = model_identity(model)
    source = TrainedEntityVectors(matcher, identity, entities, device)
    report = update_entity_index(source, catalog.retrieval_index_dir(lake), settings, logger, what=ASSET)
    return RetrievalIndexReport(report, source.encoded, identity, str(device))


def open_retrieval_index(lake: Lake, model: dict) -> EntityIndex:
    """The trained index, refused with one sentence naming both when it holds another model's vectors."""
    index = EntityIndex.load(catalog.retrieval_index_dir(lake), asset=ASSET)
    current = model_identity(model)
    built_with = index.config.get("model")
    if built_with != current:
        raise MELUserError(
            f"The {ASSET} at {catalog.retrieval_index_dir(lake)} holds the vectors of model {str(built_with)[:12]}, "
            f"but the current model is {current[:12]} (checkpoint {model['checkpoint']}); re-materialize {ASSET}.")
    return index


@dataclass
class RetrievalIndexCheck:
    model: str | None  # the model identity the index was built with
    current_model: str
    entities: int  # entities in the store
    indexed: int
    excluded: list[int]  # reported as unusable when indexed (NaN/Inf features or vector)
    missing: list[int]  # neither indexed nor excluded
    outdated: list[int]  # indexed with vectors of other features than the store holds now
    extra: list[int]  # indexed but no longer in the store

    @property
    def problems(self) -> list[str]:
        found = []
        if self.model != self.current_model:
            found.append(f"the index holds model {str(self.model)[:12]}'s vectors, the current model is "
                         f"{self.current_model[:12]}")
        for label, ids in (("entities are not indexed", self.missing),
                           ("entities are indexed with vectors of older features", self.outdated),
                           ("indexed entities are gone from the store", self.extra)):
            if ids:
                found.append(f"{len(ids)} {label} (KB indices {', '.join(map(str, ids[:10]))}"
                             f"{' ...' if len(ids) > 10 else ''})")
        return found


def check_retrieval_index(lake: Lake) -> RetrievalIndexCheck:
    """The trained index against the lake's current model and entity store, from content keys alone (no
    encoding)."""
    model = current_model(lake)
    index = EntityIndex.load(catalog.retrieval_index_dir(lake), asset=ASSET)
    entities = FeatureStore.open(catalog.entity_store_dir(lake))
    current = model_identity(model)
    kb, keys = trained_keys(entities, current)
    expected = dict(zip(kb.tolist(), keys))
    excluded = sorted(int(p["kb_index"]) for p in index.problems if p["action"] == "excluded")
    return RetrievalIndexCheck(
        model=index.config.get("model"), current_model=current, entities=len(expected), indexed=len(index),
        excluded=excluded, missing=sorted(expected.keys() - index.keys.keys() - set(excluded)),
        outdated=sorted(i for i in expected.keys() & index.keys.keys() if expected[i] != index.keys[i]),
        extra=sorted(index.keys.keys() - expected.keys()))


def find_retrieval_candidates(lake: Lake, settings: IndexSettings, *, device: torch.device,
                              logger=log) -> CandidatesReport:
    """The `retrieval_candidates` stage: top-K (`settings.candidates_per_mention`) per mention of the `mentions`
    table, its query from the lake's mention store (`catalog.mention_store_dir`) under the current model,
    searched in the trained index (which must hold that model's vectors)."""
    mentions = FeatureStore.open(catalog.mention_store_dir(lake))
    model = current_model(lake)
    index = open_retrieval_index(lake, model)
    entities = FeatureStore.open(catalog.entity_store_dir(lake))
    matcher = load_matcher(model, None, entities, device, logger)
    queries = TrainedMentionQueries(matcher, model_identity(model), mentions, device)
    return find_candidates(lake, index, queries, settings, table_name=catalog.RETRIEVAL_CANDIDATES, logger=logger)


# -- training rounds ------------------------------------------------------------------------------------


def mine_candidates(matcher: MMoEMatcher, mentions: Mentions, mention_store: FeatureStore,
                    entities: FeatureStore, positions: np.ndarray, k: int, device: torch.device) -> Mentions:
    """`mentions` with the trained top-k entity-store rows of the mentions at `positions`: an exact in-memory
    search over every usable entity's vector."""
    entity_vectors, entity_problems = encode_vectors(matcher, entities, np.arange(len(entities)), device, True)
    usable_rows = np.flatnonzero([problem is None for problem in entity_problems]).astype(np.int64)
    query_rows = mentions.mention_row[positions]
    present = query_rows >= 0
    queries, problems = encode_vectors(matcher, mention_store, query_rows[present], device, is_entity=False)
    _, found = exact_search(entity_vectors[usable_rows], queries, k)
    candidates = list(mentions.candidates)
    problem_list = list(mentions.candidate_problem)
    for position, row_found, problem in zip(positions[present].tolist(), found, problems):
        candidates[position] = np.zeros(0, np.int64) if problem else usable_rows[row_found[row_found >= 0]]
        problem_list[position] = problem
    return dataclasses.replace(mentions, candidates=candidates, candidate_problem=problem_list)
