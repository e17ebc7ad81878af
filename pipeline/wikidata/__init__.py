"""WikiData candidates for each mention: the first step of MMoE's description enrichment.

Modules: `settings` (what the stage is told, checked), `normalize` (the one string normalization),
`search` (outcome types and the cache-through loop), `cache` (DuckDB lookup cache), `api` (WikiData API
client), `dump_read` (streaming and parsing a JSON dump), `dump_build` (dump -> DuckDB label/alias index),
`dump` (the index, searched like the API), `candidates` (per-mention rows), `stage` (the asset's logic:
source choice, reuse, tables).
"""

from pipeline.wikidata.api import WikidataAPIClient
from pipeline.wikidata.cache import LookupCache
from pipeline.wikidata.candidates import (
    CANDIDATES_SCHEMA,
    FAILURES_SCHEMA,
    CandidatesResult,
    retrieve_candidates,
)
from pipeline.wikidata.dump import DumpIndex
from pipeline.wikidata.dump_build import build_index
from pipeline.wikidata.dump_read import DumpReadStats
from pipeline.wikidata.normalize import normalize
from pipeline.wikidata.search import CachedSearcher, Candidate, SearchOutcome
from pipeline.wikidata.settings import WikidataSettings, default_user_agent
from pipeline.wikidata.stage import (
    WikidataReport,
    build_wikidata_candidates,
    open_searcher,
)

__all__ = [
    "CANDIDATES_SCHEMA", "FAILURES_SCHEMA", "CachedSearcher", "Candidate", "CandidatesResult",
    "DumpIndex", "DumpReadStats", "LookupCache", "SearchOutcome", "WikidataAPIClient", "WikidataReport",
    "WikidataSettings", "build_index", "build_wikidata_candidates", "default_user_agent", "normalize",
    "open_searcher", "retrieve_candidates",
]
