"""WikiData candidates for each mention: the first step of MMoE's description enrichment.

Modules: `normalize` (the one string normalization), `search` (outcome types and the
cache-through loop), `cache` (DuckDB lookup cache), `api` (WikiData API client), `dump`
(JSON dump -> DuckDB label/alias index), `candidates` (per-mention rows), `stage` (the
asset's logic: settings, source choice, reuse, tables).
"""

from pipeline.wikidata.api import DEFAULT_ENDPOINT, WikidataAPIClient, default_user_agent
from pipeline.wikidata.cache import LookupCache
from pipeline.wikidata.candidates import CANDIDATES_SCHEMA, FAILURES_SCHEMA, CandidatesResult, retrieve_candidates
from pipeline.wikidata.dump import DumpIndex, DumpReadStats, build_index
from pipeline.wikidata.normalize import normalize
from pipeline.wikidata.search import CachedSearcher, Candidate, SearchOutcome
from pipeline.wikidata.stage import CandidatesReport, WikidataSettings, build_wikidata_candidates

__all__ = [
    "CANDIDATES_SCHEMA", "DEFAULT_ENDPOINT", "FAILURES_SCHEMA", "CachedSearcher", "Candidate", "CandidatesReport",
    "CandidatesResult", "DumpIndex", "DumpReadStats", "LookupCache", "SearchOutcome", "WikidataAPIClient",
    "WikidataSettings", "build_index", "build_wikidata_candidates", "default_user_agent", "normalize",
    "retrieve_candidates",
]
