"""Candidate retrieval: a FAISS index over the KB's combined CLIP vectors, and top-K per mention.

``settings``     ``IndexSettings``: how the index is built and searched, each field documented
``vectors``      how text and image vectors combine into one search vector (and why)
``faiss_index``  the index: exact or IVF, ids = KB indices, incremental sync, atomic storage
``search``       its searchers: exact top-k as a matrix product on the CPU, FAISS on the GPU
``sync``         keeping the stored index in step with its vectors (the ``entity_index`` stage)
``candidates``   top-K KB indices per mention and recall@K of the gold entity per split (``mention_candidates``)
``checks``       the stage outputs against their inputs, for the asset checks
"""

from pipeline.index.candidates import (
    CANDIDATES_SCHEMA,
    CandidatesReport,
    check_compatible,
    find_candidates,
    find_mention_candidates,
    recall_curves,
    search_mentions,
)
from pipeline.index.faiss_index import EntityIndex, SyncCounts, stored_index_identity
from pipeline.index.settings import IndexSettings
from pipeline.index.sync import IndexReport, build_entity_index, update_entity_index
from pipeline.index.vectors import COMBINATION_RULE, ItemVectors

__all__ = [
    "CANDIDATES_SCHEMA", "COMBINATION_RULE", "CandidatesReport", "EntityIndex", "IndexReport", "IndexSettings",
    "ItemVectors", "SyncCounts", "build_entity_index", "check_compatible", "find_candidates",
    "find_mention_candidates", "recall_curves", "search_mentions", "stored_index_identity",
    "update_entity_index",
]
