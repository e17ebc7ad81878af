"""What a WikiData search returns, and the cache-through loop both sources share.

A searcher (the dump index or the API client) implements one method, `_lookup`,
that answers a batch of normalized search strings from its source. `search_many`
wraps it the same way for both: answer from the DuckDB cache what it can, ask the
source only for the rest (including earlier failures), and write each batch's
answers to the cache before starting the next, so a crash loses at most the batch
in flight.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from pipeline.wikidata.normalize import normalize

if TYPE_CHECKING:
    from pipeline.wikidata.cache import LookupCache

OK, FAILED = "ok", "failed"
PROGRESS_EVERY_S = 15.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    qid: str
    label: str | None
    description: str | None  # None when the item has none in the language
    match: str  # "label" | "alias" (dump) or "search" (API)


@dataclass(frozen=True)
class SearchOutcome:
    """The answer to one search string: candidates best first, or why there are none."""

    status: str  # OK | FAILED
    candidates: tuple[Candidate, ...] = ()
    reason: str | None = None  # why it failed, e.g. "http_503", "timeout"
    attempts: int = 0  # requests made for it in the run that produced it
    last_status: int | None = None  # last HTTP status seen (None for the dump or no response)
    limit: int = 0  # how many candidates were asked for
    from_cache: bool = False

    @property
    def ok(self) -> bool:
        return self.status == OK

    def answers(self, limit: int) -> bool:
        """A cached success answers a request for `limit` candidates if it asked for as many,
        or if it came back with fewer than it asked for (there are no more)."""
        return self.ok and (self.limit >= limit or len(self.candidates) < self.limit)

    def first(self, limit: int) -> SearchOutcome:
        return replace(self, candidates=self.candidates[:limit])


@dataclass
class SearchStats:
    distinct_searches: int = 0
    cache_hits: int = 0
    looked_up: int = 0  # searches answered by the source itself in this run
    retried_failures: int = 0  # searches that had failed in an earlier run and were asked again
    http_requests: int = 0
    failures_by_reason: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "distinct_searches": self.distinct_searches,
            "cache_hits": self.cache_hits,
            "looked_up": self.looked_up,
            "retried_failures": self.retried_failures,
            "http_requests": self.http_requests,
            "failures": sum(self.failures_by_reason.values()),
            "failures_by_reason": dict(sorted(self.failures_by_reason.items())),
        }


class CachedSearcher:
    """Base of the two sources: cache-through `search_many` around a batch `_lookup`."""

    batch_size = 100
    kind: str  # "dump" or "api": the `source` column of the output table

    def __init__(self, cache: LookupCache, logger=log):
        self.cache = cache
        self.logger = logger
        self.stats = SearchStats()

    @property
    def source(self) -> str:
        """The cache's name for this source, "<kind>:<identity>"; a different source never reuses an entry."""
        return f"{self.kind}:{self.identity}"

    @property
    def identity(self) -> str:
        """What tells this source from another of its kind (the API's endpoint, the dump's content)."""
        raise NotImplementedError

    def _lookup(self, searches: list[str], language: str, limit: int) -> dict[str, SearchOutcome]:
        raise NotImplementedError

    def details(self, language: str) -> dict:
        """Source-specific figures for the run's statistics."""
        return {}

    def close(self) -> None:
        """Release connections (HTTP session, index files)."""

    def search_many(self, strings: Iterable[str], language: str, limit: int) -> dict[str, SearchOutcome]:
        """Outcomes keyed by normalized search string; each distinct string is looked up once."""
        searches = list(dict.fromkeys(key for key in map(normalize, strings) if key))
        self.stats.distinct_searches += len(searches)
        cached = self.cache.get(self.source, searches, language)
        outcomes: dict[str, SearchOutcome] = {}
        todo, hits = [], 0
        for search in searches:
            entry = cached.get(search)
            if entry is not None and entry.answers(limit):
                outcomes[search] = entry.first(limit)
                hits += 1
            else:
                todo.append(search)
                if entry is not None and not entry.ok:
                    self.stats.retried_failures += 1
        self.stats.cache_hits += hits
        if todo:
            self.logger.info(
                f"{self.kind}: {hits} of {len(searches)} search strings answered from the "
                f"cache; looking up {len(todo)} ({self.source})."
            )
        self._look_up_in_batches(todo, language, limit, outcomes)
        return outcomes

    def _look_up_in_batches(self, todo, language, limit, outcomes) -> None:
        last_report = time.monotonic()
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            fresh = self._lookup(batch, language, limit)
            self.cache.put(self.source, language, limit, fresh)  # durable before the next batch
            outcomes.update(fresh)
            self.stats.looked_up += len(fresh)
            for outcome in fresh.values():
                if not outcome.ok:
                    self.stats.failures_by_reason[outcome.reason] += 1
            done = start + len(batch)
            if time.monotonic() - last_report >= PROGRESS_EVERY_S or done == len(todo):
                failed = sum(self.stats.failures_by_reason.values())
                self.logger.info(f"{self.kind}: looked up {done}/{len(todo)} search strings ({failed} failed).")
                last_report = time.monotonic()
