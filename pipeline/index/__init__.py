"""Candidate retrieval: a FAISS index over the KB's combined CLIP vectors, and top-K per mention.

``vectors``      how text and image vectors combine into one search vector (and why)
``faiss_index``  the index: exact or IVF, ids = KB indices, incremental sync, atomic storage
``candidates``   top-K KB indices per mention and recall@K of the gold entity per split
"""

from pipeline.index.candidates import (
    CANDIDATES_SCHEMA, CandidatesReport, check_compatible, find_mention_candidates, recall_curves, search_mentions,
)
from pipeline.index.faiss_index import (
    EntityIndex, IndexReport, IndexSettings, SyncCounts, index_dir, read_index_config, update_entity_index,
)
from pipeline.index.vectors import COMBINATION_RULE, ItemVectors

__all__ = [
    "CANDIDATES_SCHEMA", "COMBINATION_RULE", "CandidatesReport", "EntityIndex", "IndexReport", "IndexSettings",
    "ItemVectors", "SyncCounts", "check_compatible", "find_mention_candidates", "index_dir", "recall_curves",
    "read_index_config", "search_mentions", "update_entity_index",
]
