"""Top-K candidate entities per mention from the entity index, and their recall.

Every mention of every split (nil ones too: a later NIL decision needs their scores) is
searched with its query vector: the CLIP rule of ``pipeline.index.vectors`` against the zero-shot entity
index (``mention_candidates``), or the trained matcher's retrieval vector against the trained index
(``pipeline.training.retrieval``, ``retrieval_candidates``); both are a ``QuerySource``. A mention that cannot be
searched (no row in the mention feature store, a broken text vector) still gets a row, with
no candidates and a ``problem`` saying why, and counts as a miss: recall is measured over
every non-nil mention of the split, never over the ones that happened to work.

The result is reused when its inputs are unchanged: the index fingerprint, the query source's
fingerprint, the ``mentions`` table fingerprint, K and nprobe.

``find_mention_candidates`` is the ``mention_candidates`` stage (the lake's entity index, a mention feature
store); ``find_candidates`` searches any index with any ``QuerySource`` into a table of that schema.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa

from pipeline import catalog
from pipeline.errors import MELUserError
from pipeline.features.store import FeatureStore
from pipeline.hashing import hash_strings
from pipeline.index.faiss_index import EntityIndex
from pipeline.index.settings import IndexSettings, refuse
from pipeline.index.vectors import ItemVectors, query_matrix, read_checked
from pipeline.lake import Lake, StoredTable

CANDIDATES_VERSION = "1"
RECALL_AT = (1, 10, 50, 100)
QUERY_BATCH = 4096
GPU_MAX_K = 2048  # faiss GPU search limit
NO_FEATURES = "no row in the mention feature store (see mention_features)"

log = logging.getLogger(__name__)


class QuerySource(Protocol):
    """The query vectors of the mentions of a feature store, for one kind of index."""

    ids: np.ndarray  # str mention ids, in row order
    source: str  # where the queries come from, for messages
    fingerprint: str  # digest of what the queries are made of
    identity: dict  # must equal the index config's values for the same keys (encoder, dim, model...)

    def queries(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """(query vectors [n, index_dim] float32, usable [n] bool, problem per row: None when nothing)."""


class ClipMentionQueries:
    """Queries under the CLIP rule (``vectors.query_matrix``) from the mention feature store's pooled vectors."""

    def __init__(self, items: ItemVectors):
        self.items, self.ids, self.source, self.fingerprint = items, items.ids, items.source, items.fingerprint
        self.identity = {"encoder": items.encoder, "dim": items.dim}

    def queries(self, rows: np.ndarray):
        batch = read_checked(self.items, rows)
        return query_matrix(batch), batch.text_ok, batch.problems


def as_queries(mentions: "QuerySource | ItemVectors") -> QuerySource:
    return ClipMentionQueries(mentions) if isinstance(mentions, ItemVectors) else mentions


CANDIDATES_SCHEMA = pa.schema([
    ("mention_id", pa.string()),
    ("split", pa.string()),
    ("candidates", pa.list_(pa.int64())),  # KB indices, best first
    ("scores", pa.list_(pa.float32())),  # mean cosine over the mention's modalities
    ("gold_index", pa.int64()),  # null for nil
    ("gold_rank", pa.int32()),  # 1-based; null when nil or outside the top K
    ("problem", pa.string()),  # what was wrong with the mention's features; null when nothing
])


@dataclass
class CandidatesReport:
    reused: bool
    fingerprint: str
    stats: dict
    table: StoredTable  # the candidates table as written (or kept)
    curves: dict[str, np.ndarray]  # recall@n for n = 1..K per split (recall_curves)


def find_mention_candidates(lake: Lake, settings: IndexSettings, *, logger=log) -> CandidatesReport:
    """The ``mention_candidates`` stage: every mention of the ``mentions`` table searched in the entity index
    (``catalog.entity_index_dir``) with its CLIP query from the lake's mention feature store
    (``catalog.mention_store_dir``)."""
    mentions = ItemVectors.from_store(FeatureStore.open(catalog.mention_store_dir(lake)))
    index = EntityIndex.load(catalog.entity_index_dir(lake))
    return find_candidates(lake, index, mentions, settings, table_name=catalog.MENTION_CANDIDATES, logger=logger)


def find_candidates(lake: Lake, index: EntityIndex, mentions: QuerySource | ItemVectors, settings: IndexSettings,
                    *, table_name: str, logger=log) -> CandidatesReport:
    """Search every mention of the ``mentions`` table in ``index``; write the ``table_name`` table.

    ``mentions``: the mention feature store's vectors (``ItemVectors``, CLIP rule) or any ``QuerySource``;
    ``settings.candidates_per_mention`` candidates each, clamped to the index size."""
    mentions = as_queries(mentions)
    check_compatible(index, mentions)
    table = _mentions_table(lake)
    wanted = settings.candidates_per_mention
    k = min(wanted, len(index))
    if k < wanted:
        logger.warning(f"candidates_per_mention={wanted} exceeds the {len(index)} indexed entities: "
                       f"returning {k} candidates each.")
    fingerprint = hash_strings([CANDIDATES_VERSION, index.fingerprint, mentions.fingerprint,
                                lake.table_fingerprint(catalog.MENTIONS) or "", str(k),
                                str(_nprobe_used(index, settings))])
    if lake.table_fingerprint(table_name) == fingerprint:
        logger.info(f"Inputs unchanged (fingerprint {fingerprint[:12]}): reusing the stored {table_name} table.")
        stored = lake.read_table(table_name, columns=["split", "gold_index", "gold_rank"])
        return CandidatesReport(True, fingerprint, lake.table_extra(table_name), lake.stored_table(table_name),
                                recall_curves(stored, k))

    use_gpu = settings.gpu()
    if use_gpu and k > GPU_MAX_K:
        refuse(f"candidates_per_mention={wanted} exceeds faiss's GPU limit of {GPU_MAX_K}; lower it.")
    started = time.perf_counter()
    candidates, scores, problems, searched = search_mentions(index, mentions, table["mention_id"].to_pylist(), k,
                                                             settings, use_gpu, logger)
    seconds = time.perf_counter() - started
    logger.info(f"Searched {searched} mentions in {seconds:.1f} s ({searched / max(seconds, 1e-9):.0f} queries/s, "
                f"{index.kind} index, {'GPU' if use_gpu else 'CPU'}).")

    result = _result_table(table, candidates, scores, problems)
    stats = {
        "mentions": result.num_rows,
        "searched": searched,
        "k": k,
        "nprobe": _nprobe_used(index, settings),
        "index_kind": index.kind,
        "device": "GPU" if use_gpu else "CPU",
        "search_seconds": seconds,
        "queries_per_second": searched / max(seconds, 1e-9),
        "problems": _count(problems),
        "fewer_than_k": int(sum(1 for c in candidates if 0 < len(c) < k)),
        "recall": recall_by_split(result, k),
    }
    lake.write_table(table_name, result, fingerprint, extra=stats)
    return CandidatesReport(False, fingerprint, stats, lake.stored_table(table_name), recall_curves(result, k))


def check_compatible(index: EntityIndex, mentions: QuerySource | ItemVectors) -> None:
    """Queries and index vectors must live in one space (one encoder, one dimension, one trained model), or the
    scores mean nothing."""
    mentions = as_queries(mentions)
    config = index.config
    if mentions.identity.get("encoder") != config["encoder"]:
        raise MELUserError(
            f"The mention features at {mentions.source} were written by encoder "
            f"{identity_text(mentions.identity.get('encoder') or {})}, but the entity index was built with "
            f"{identity_text(config['encoder'])}; re-materialize entity_features, entity_index and mention_features "
            f"with the same encoder.")
    if "model" in mentions.identity and mentions.identity["model"] != config.get("model"):
        raise MELUserError(
            f"The queries from {mentions.source} come from the trained model {mentions.identity['model'][:12]}, but "
            f"the index was built with the vectors of model {str(config.get('model'))[:12]}; "
            f"re-materialize retrieval_index (and retrieval_candidates) for the current model.")
    if mentions.identity.get("dim") != config["dim"]:
        raise MELUserError(f"The mention features at {mentions.source} have dimension {mentions.identity.get('dim')}, "
                           f"the entity index {config['dim']}; re-materialize them with the same encoder.")


def identity_text(encoder: dict) -> str:
    """An encoder identity as `key=value, ...`, for messages."""
    return ", ".join(f"{key}={value}" for key, value in sorted(encoder.items())) or "(unnamed)"


def _nprobe_used(index: EntityIndex, settings: IndexSettings) -> int | None:
    return min(settings.nprobe, index.config["nlist"]) if index.kind == "ivf" else None


def _mentions_table(lake: Lake) -> pa.Table:
    try:
        return lake.read_table(catalog.MENTIONS, columns=["mention_id", "split", "gold_index", "is_nil"])
    except FileNotFoundError:
        raise MELUserError(f"The mentions table is missing at {lake.table_path(catalog.MENTIONS)}; "
                           f"materialize mentions first.") from None


def search_mentions(index: EntityIndex, mentions: QuerySource | ItemVectors, mention_ids: list[str], k: int,
                    settings: IndexSettings, use_gpu: bool, logger=log):
    """Top-k KB indices and scores per mention id, in the order given, and problems[i] (None when searched):
    a mention without a row in `mentions` or with an unusable query vector gets no candidates and a problem."""
    mentions = as_queries(mentions)
    n = len(mention_ids)
    candidates: list = [[] for _ in range(n)]
    scores: list = [[] for _ in range(n)]
    problems: list = [None] * n
    row_of = {str(item_id): row for row, item_id in enumerate(mentions.ids)}
    wanted = list(mention_ids)
    store_rows = np.asarray([row_of.get(mention_id, -1) for mention_id in wanted], dtype=np.int64)
    for position in np.flatnonzero(store_rows < 0):
        problems[position] = NO_FEATURES
    stale = len(row_of.keys() - set(wanted))
    if stale:
        logger.info(f"{stale} mentions of {mentions.source} are not in the mentions table; they are not searched.")
    positions = np.flatnonzero(store_rows >= 0)
    positions = positions[np.argsort(store_rows[positions], kind="stable")]  # read the store front to back
    search = index.searcher(settings.nprobe, use_gpu)
    searched = 0
    for start in range(0, len(positions), QUERY_BATCH):
        batch_positions = positions[start:start + QUERY_BATCH]
        vectors, usable, batch_problems = mentions.queries(store_rows[batch_positions])
        for position, problem in zip(batch_positions, batch_problems):
            problems[position] = problem
        if usable.any():
            found_scores, found_ids = search(np.ascontiguousarray(vectors[usable], dtype=np.float32), k)
            for position, ids_row, scores_row in zip(batch_positions[usable], found_ids, found_scores):
                keep = ids_row >= 0  # IVF returns -1 when the probed lists hold fewer than k entities
                candidates[position] = ids_row[keep]
                scores[position] = scores_row[keep]
        searched += int(usable.sum())
        if len(positions) > QUERY_BATCH:
            logger.info(f"Searched {start + len(batch_positions)} of {len(positions)} mentions.")
    return candidates, scores, problems, searched


def _result_table(table: pa.Table, candidates: list, scores: list, problems: list) -> pa.Table:
    gold = table["gold_index"].to_pylist()
    nil = table["is_nil"].to_pylist()
    ranks = [_rank(found, g) if g is not None and not is_nil else None
             for found, g, is_nil in zip(candidates, gold, nil)]
    return pa.table({
        "mention_id": table["mention_id"],
        "split": table["split"],
        "candidates": pa.array([np.asarray(c, dtype=np.int64) for c in candidates], pa.list_(pa.int64())),
        "scores": pa.array([np.asarray(s, dtype=np.float32) for s in scores], pa.list_(pa.float32())),
        "gold_index": table["gold_index"],
        "gold_rank": pa.array(ranks, pa.int32()),
        "problem": pa.array(problems, pa.string()),
    }, schema=CANDIDATES_SCHEMA)


def _rank(found: np.ndarray, gold: int) -> int | None:
    hits = np.flatnonzero(np.asarray(found) == gold)
    return int(hits[0]) + 1 if len(hits) else None


def recall_by_split(result: pa.Table, k: int) -> dict[str, dict]:
    """{split: {"mentions_with_gold": n, "recall@1": r, ...}} over every non-nil mention of the split.

    Recall is reported at each of 1, 10, 50, 100 not above K, and at K itself.
    """
    cutoffs = sorted({c for c in RECALL_AT if c <= k} | {k})
    report = {}
    for split, split_ranks in _gold_ranks_by_split(result).items():
        row: dict = {"mentions_with_gold": len(split_ranks)}
        for cutoff in cutoffs:
            hits = int((split_ranks <= cutoff).sum())  # NaN compares False: a miss
            row[f"recall@{cutoff}"] = hits / len(split_ranks) if len(split_ranks) else None
        report[split] = row
    return report


def recall_curves(result: pa.Table, k: int) -> dict[str, np.ndarray]:
    """{split: recall@n for n = 1..K} over the same mentions as ``recall_by_split`` (splits without one: left out)."""
    return {split: np.array([(ranks <= n).mean() for n in range(1, k + 1)])
            for split, ranks in _gold_ranks_by_split(result).items() if len(ranks)}


def _gold_ranks_by_split(result: pa.Table) -> dict[str, np.ndarray]:
    """The gold rank of every non-nil mention, per split; NaN = gold not in the top K (a miss)."""
    ranks = np.array(result["gold_rank"].to_pylist(), dtype=float)
    has_gold = np.array([gold is not None for gold in result["gold_index"].to_pylist()], dtype=bool)
    splits = np.array(result["split"].to_pylist(), dtype=object)
    return {split: ranks[(splits == split) & has_gold] for split in sorted(set(splits))}


def _count(problems: list) -> dict[str, int]:
    counts: dict[str, int] = {}
    for problem in problems:
        if problem is not None:
            counts[problem] = counts.get(problem, 0) + 1
    return counts
