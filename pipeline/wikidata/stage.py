"""The `wikidata_candidates` stage: choice of source, reuse, and the tables it writes.

The stored tables are reused when their fingerprint matches (mentions table, source
identity, number of candidates, language, code version) and the run that wrote them
had no failed lookup. After failures the stage runs again, and the cache makes that
cheap: only the failed strings go back to the source.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline import catalog
from pipeline.errors import MELUserError
from pipeline.hashing import hash_strings, table_content_hash
from pipeline.lake import Lake, StoredTable, cache_hit_rate
from pipeline.wikidata.api import WikidataAPIClient
from pipeline.wikidata.cache import LookupCache
from pipeline.wikidata.candidates import retrieve_candidates
from pipeline.wikidata.dump import DumpIndex
from pipeline.wikidata.dump_read import OPENERS
from pipeline.wikidata.search import CachedSearcher
from pipeline.wikidata.settings import DUMP_ENV, WikidataSettings

CANDIDATES_VERSION = "1"  # bump when the output changes for the same inputs
DATASET_DUMP_DIR = "wikidata"
RUN_COUNTERS = ("cache_hits", "looked_up", "retried_failures", "http_requests", "dump_lines_read")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WikidataReport:
    reused: bool
    fingerprint: str
    stats: dict  # counts per outcome, cache and source figures (also stored with the tables)
    tables: dict[str, StoredTable]  # catalog.WIKIDATA_TABLES: wikidata_candidates, wikidata_failures


def find_dataset_dump(dataset_dir: Path) -> Path | None:
    """The dump a dataset carries in `<dataset>/wikidata/`, if any (the demo dataset has one)."""
    folder = Path(dataset_dir) / DATASET_DUMP_DIR
    if not folder.is_dir():
        return None
    dumps = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(tuple(OPENERS)))
    if len(dumps) > 1:
        names = ", ".join(p.name for p in dumps)
        raise MELUserError(f"{folder} holds several WikiData dumps ({names}); set `dump_path` to the one to use.")
    return dumps[0] if dumps else None


def resolve_source(settings: WikidataSettings, find_dataset_dir: Callable[[], Path | None]) -> tuple[str, Path | None]:
    """("dump", path) or ("api", None) from the settings; the dataset is looked at only for "auto"."""
    configured = settings.configured_dump()
    if settings.source == "api":
        return "api", None
    if configured:
        return "dump", Path(configured).expanduser()
    if settings.source == "dump":
        raise MELUserError(f"The WikiData source is 'dump' but no dump is configured; set `dump_path` "
                           f"(or ${DUMP_ENV}).")
    dataset_dir = find_dataset_dir()
    dump = find_dataset_dump(dataset_dir) if dataset_dir is not None else None
    return ("dump", dump) if dump is not None else ("api", None)


@contextlib.contextmanager
def open_searcher(settings: WikidataSettings, lake: Lake, find_dataset_dir: Callable[[], Path | None],
                  logger=log) -> Iterator[CachedSearcher]:
    """The configured source behind the lookup cache."""
    kind, dump = resolve_source(settings, find_dataset_dir)
    with LookupCache(lake.duckdb_path(catalog.WIKIDATA_CACHE)) as cache:
        if kind == "dump":
            searcher = DumpIndex(dump, cache, catalog.duckdb_dir(lake), logger=logger)
        else:
            searcher = WikidataAPIClient(cache, settings, logger=logger)
        try:
            yield searcher
        finally:
            searcher.close()


def build_wikidata_candidates(
    lake: Lake,
    settings: WikidataSettings,
    *,
    find_dataset_dir: Callable[[], Path | None] = lambda: None,
    force: bool = False,
    logger=log,
) -> WikidataReport:
    """Write `wikidata_candidates` and `wikidata_failures`, or reuse them when nothing changed.

    `find_dataset_dir` locates the dataset, whose own dump the "auto" source uses; it is called only then.
    """
    started = time.monotonic()
    mentions_fingerprint = lake.table_fingerprint(catalog.MENTIONS)
    if mentions_fingerprint is None:
        raise MELUserError(f"The mentions table has not been materialized yet (no file at "
                           f"{lake.table_path(catalog.MENTIONS)}); materialize `mentions` first.")
    with open_searcher(settings, lake, find_dataset_dir, logger) as searcher:
        fingerprint = hash_strings([CANDIDATES_VERSION, mentions_fingerprint, searcher.source,
                                    str(settings.max_candidates), settings.language])
        if not force and _reusable(lake, fingerprint):
            logger.info(f"Mentions and source unchanged (fingerprint {fingerprint[:12]}), no failed lookups: "
                        f"reusing the stored tables.")
            # Nothing is looked up: every answer comes from stored results, a hit rate of 1.
            stats = {**lake.table_extra(catalog.WIKIDATA_CANDIDATES), **dict.fromkeys(RUN_COUNTERS, 0),
                     "cache_hit_rate": 1.0}
            _warn_about_truncation(stats, logger)
            return _report(lake, True, fingerprint, stats)
        mentions = lake.read_table(catalog.MENTIONS, columns=["mention_id", "mention"])
        result = retrieve_candidates(mentions, searcher, max_candidates=settings.max_candidates,
                                     language=settings.language, logger=logger)
    stats = {**result.stats, "content_hash": table_content_hash(result.table),
             "seconds": round(time.monotonic() - started, 3),
             "cache_hit_rate": cache_hit_rate(result.stats["cache_hits"], result.stats["distinct_searches"])}
    _warn_about_truncation(stats, logger)
    lake.write_table(catalog.WIKIDATA_FAILURES, result.failures, fingerprint, extra=stats)
    lake.write_table(catalog.WIKIDATA_CANDIDATES, result.table, fingerprint, extra=stats)
    return _report(lake, False, fingerprint, stats)


def _report(lake: Lake, reused: bool, fingerprint: str, stats: dict) -> WikidataReport:
    return WikidataReport(reused, fingerprint, stats,
                          {name: lake.stored_table(name) for name in catalog.WIKIDATA_TABLES})


def _reusable(lake: Lake, fingerprint: str) -> bool:
    if not lake.tables_up_to_date(list(catalog.WIKIDATA_TABLES), fingerprint):
        return False
    stored = lake.table_extra(catalog.WIKIDATA_CANDIDATES)
    return stored.get("failures") == 0 and "content_hash" in stored


def _warn_about_truncation(stats: dict, logger) -> None:
    if stats.get("dump_truncated_after_lines") is not None:
        logger.warning(f"The WikiData dump {stats.get('dump_path')} is truncated after "
                       f"{stats['dump_truncated_after_lines']:,} lines ({stats.get('dump_truncation')}); "
                       f"items after that point cannot be found. Replace the file to re-index it.")
