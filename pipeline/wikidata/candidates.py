"""Per-mention WikiData candidates: the rows the description chooser reads.

One row per (mention, candidate), best first. A mention without candidates has no
rows, and the statistics say why for each such mention: no match, a failed lookup
(also listed in the failures table with its reason), or an empty search string.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from pipeline.errors import MELUserError
from pipeline.wikidata.normalize import normalize
from pipeline.wikidata.search import CachedSearcher

log = logging.getLogger(__name__)

CANDIDATES_SCHEMA = pa.schema(
    [
        ("mention_id", pa.string()),
        ("search", pa.string()),  # the normalized mention string that was looked up
        ("rank", pa.int32()),  # 0-based, best first
        ("qid", pa.string()),
        ("label", pa.string()),
        ("description", pa.string()),  # null when WikiData has none in the language
        ("match", pa.string()),  # "label" | "alias" (dump) | "search" (API)
        ("source", pa.string()),  # "dump" | "api"
    ]
)

FAILURES_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("search", pa.string()),
        ("language", pa.string()),
        ("reason", pa.string()),
        ("attempts", pa.int32()),
        ("last_status", pa.int32()),
    ]
)


@dataclass
class CandidatesResult:
    table: pa.Table  # CANDIDATES_SCHEMA
    failures: pa.Table  # FAILURES_SCHEMA: lookups that failed in this run
    stats: dict


def retrieve_candidates(
    mentions: pa.Table,
    searcher: CachedSearcher,
    *,
    max_candidates: int = 10,
    language: str = "en",
    logger=log,
) -> CandidatesResult:
    """Up to `max_candidates` (checked by `WikidataSettings`) WikiData items per mention, looked up once per
    distinct normalized string."""
    missing = {"mention_id", "mention"} - set(mentions.column_names)
    if missing:
        raise MELUserError(f"The mentions table lacks the column(s) {', '.join(sorted(missing))}.")
    mention_ids = mentions["mention_id"].to_pylist()
    searches = [normalize(text) if isinstance(text, str) else "" for text in mentions["mention"].to_pylist()]
    outcomes = searcher.search_many([s for s in searches if s], language, max_candidates)

    rows = {name: [] for name in CANDIDATES_SCHEMA.names}
    without = Counter()
    for mention_id, search in zip(mention_ids, searches, strict=True):
        outcome = outcomes.get(search)
        if outcome is None:
            without["empty_search"] += 1
        elif not outcome.ok:
            without["failed_lookup"] += 1
        elif not outcome.candidates:
            without["no_match"] += 1
        for rank, candidate in enumerate(outcome.candidates[:max_candidates] if outcome and outcome.ok else ()):
            for column, value in (("mention_id", mention_id), ("search", search), ("rank", rank),
                                  ("qid", candidate.qid), ("label", candidate.label),
                                  ("description", candidate.description), ("match", candidate.match),
                                  ("source", searcher.kind)):
                rows[column].append(value)
    table = pa.table(rows, schema=CANDIDATES_SCHEMA)
    failures = _failures_table(searcher, outcomes, language)
    stats = _stats(table, len(mention_ids), without, searcher, language, max_candidates)
    _log_summary(stats, logger)
    return CandidatesResult(table, failures, stats)


def _failures_table(searcher: CachedSearcher, outcomes: dict, language: str) -> pa.Table:
    failed = sorted((search, o) for search, o in outcomes.items() if not o.ok)
    return pa.table(
        {
            "source": [searcher.kind] * len(failed),
            "search": [search for search, _ in failed],
            "language": [language] * len(failed),
            "reason": [o.reason for _, o in failed],
            "attempts": [o.attempts for _, o in failed],
            "last_status": [o.last_status for _, o in failed],
        },
        schema=FAILURES_SCHEMA,
    )


def _stats(table: pa.Table, mentions: int, without: Counter, searcher: CachedSearcher, language: str,
           max_candidates: int) -> dict:
    with_candidates = len(set(table["mention_id"].to_pylist()))
    return {
        "source": searcher.kind,
        "language": language,
        "max_candidates": max_candidates,
        "mentions": mentions,
        "mentions_with_candidates": with_candidates,
        "mentions_without_candidates": mentions - with_candidates,
        "mentions_no_match": without["no_match"],
        "mentions_failed_lookup": without["failed_lookup"],
        "mentions_empty_search": without["empty_search"],
        "candidate_rows": table.num_rows,
        "mean_candidates_per_mention": round(table.num_rows / mentions, 3) if mentions else 0.0,
        **searcher.stats.as_dict(),
        **searcher.details(language),
    }


def _log_summary(stats: dict, logger) -> None:
    logger.info(
        f"WikiData candidates ({stats['source']}): {stats['mentions_with_candidates']} of {stats['mentions']} "
        f"mentions have candidates; {stats['mentions_no_match']} no match, {stats['mentions_failed_lookup']} "
        f"failed lookups, {stats['mentions_empty_search']} empty mention strings. {stats['distinct_searches']} "
        f"distinct strings: {stats['cache_hits']} from the cache, {stats['looked_up']} looked up, "
        f"{stats['http_requests']} HTTP requests."
    )
    if stats["failures"]:
        reasons = ", ".join(f"{n} {reason}" for reason, n in stats["failures_by_reason"].items())
        logger.warning(f"{stats['failures']} WikiData lookups failed ({reasons}); the next run asks for "
                       f"these again, and only these.")
