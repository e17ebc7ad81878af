"""A WikiData JSON dump, streamed once into a DuckDB label/alias index, searched like the API.

Reading the dump is `dump_read`, building its index `dump_build`; this module finds (or builds) the index
of a dump file and answers searches from it.

Search is an exact match on the normalized string; hits rank label before alias, then
by numerically smaller QID: QIDs are handed out in creation order, and the items
created first are, on the whole, the prominent ones (Q90 Paris, Q142 France), which is
the order a reader expects among namesakes. The order is total, so runs agree.

An index is named by the dump's content fingerprint (`dump_read.dump_fingerprint`): a
repaired or replaced file has other content, hence another fingerprint, and gets its
own index. The fingerprint is remembered per (path, size, mtime) so an unchanged dump
is not even opened on later runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import duckdb
import pyarrow as pa

from pipeline.wikidata.cache import LookupCache
from pipeline.wikidata.dump_build import INDEX_VERSION, build_index
from pipeline.wikidata.dump_read import (
    ALIAS,
    LABEL,
    DumpReadStats,
    check_dump_path,
    dump_fingerprint,
)
from pipeline.wikidata.search import OK, CachedSearcher, Candidate, SearchOutcome
from pipeline.wikidata.settings import check_language

MATCH_NAMES = {LABEL: "label", ALIAS: "alias"}

log = logging.getLogger(__name__)

# One sortable key per hit: match rank in the high bits, QID number in the low 40 (QIDs have
# at most 12 digits, below 2**40), so `min(key, n)` picks each search's best n in one pass
# over the join, however many namesakes a common string has.
QID_BITS = 40
SEARCH_SQL = f"""
WITH best AS (
    SELECT w.search, unnest(min((t.match_rank::BIGINT << {QID_BITS}) | t.qid_num, $keep)) AS rank_key
    FROM wanted w JOIN terms t ON t.term = w.search
    GROUP BY w.search
)
SELECT b.search, (b.rank_key >> {QID_BITS})::INTEGER AS match_rank, i.qid, i.label, i.description
FROM best b JOIN items i ON i.qid_num = b.rank_key & {(1 << QID_BITS) - 1}
ORDER BY b.search, b.rank_key
"""


def _open_index(path: Path, logger) -> duckdb.DuckDBPyConnection | None:
    """An existing index, or None (after removing it) when it cannot be read: it is rebuilt."""
    con = None
    try:
        con = duckdb.connect(str(path), read_only=True)
        con.execute("SELECT count(*) FROM build_info").fetchall()
        return con
    except duckdb.Error as error:
        if con is not None:
            con.close()
        logger.warning(f"The dump index {path} cannot be read ({error}); rebuilding it.")
        path.unlink(missing_ok=True)
        return None


class DumpIndex(CachedSearcher):
    """Searches a WikiData dump through its DuckDB index, built on first need."""

    batch_size = 10_000  # each batch scans the terms once (bench/wikidata.md): large batches amortize it
    kind = "dump"

    def __init__(self, dump_path: Path | str, cache: LookupCache, index_dir: Path | str, *, logger=log):
        super().__init__(cache, logger)
        self.dump_path = check_dump_path(Path(dump_path).resolve())
        self.index_dir = Path(index_dir)
        self._fingerprint: str | None = None
        self._indexes: dict[str, duckdb.DuckDBPyConnection] = {}
        self.read_stats: dict[str, DumpReadStats] = {}  # builds done in this run, by language

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            stat = self.dump_path.stat()
            key = (str(self.dump_path), stat.st_size, stat.st_mtime_ns)
            self._fingerprint = self.cache.remembered_fingerprint(*key)
            if self._fingerprint is None:
                self._fingerprint = dump_fingerprint(self.dump_path)
                self.cache.remember_fingerprint(*key, self._fingerprint)
        return self._fingerprint

    @property
    def identity(self) -> str:
        return self.fingerprint

    def index_path(self, language: str) -> Path:
        check_language(language)
        return self.index_dir / f"wikidata-dump-{self.fingerprint}-v{INDEX_VERSION}-{language}.duckdb"

    def index(self, language: str) -> duckdb.DuckDBPyConnection:
        """The read-only index for `language`, built from the dump if there is none yet."""
        if language not in self._indexes:
            path = self.index_path(language)
            con = _open_index(path, self.logger) if path.is_file() else None
            if con is None:
                self.read_stats[language] = build_index(
                    self.dump_path, path, language, fingerprint=self.fingerprint, logger=self.logger)
                self._forget_previous_index(language, path)
                con = duckdb.connect(str(path), read_only=True)
            self._indexes[language] = con
        return self._indexes[language]

    def _forget_previous_index(self, language: str, path: Path) -> None:
        """Delete the index of an older version of the same dump file: it will not be used again."""
        previous = self.cache.replace_index_record(str(self.dump_path), language, str(path))
        if previous and Path(previous).is_file():
            Path(previous).unlink()
            self.logger.info(f"Removed {previous}, the index of an earlier version of {self.dump_path}.")

    def _lookup(self, searches: list[str], language: str, limit: int) -> dict[str, SearchOutcome]:
        con = self.index(language)
        con.register("wanted", pa.table({"search": pa.array(searches, pa.string())}))
        try:
            # twice the limit: a QID the dump repeats (it should not) takes two places, dropped below
            rows = pa.table(con.sql(SEARCH_SQL, params={"keep": 2 * limit})).to_pylist()
        finally:
            con.unregister("wanted")
        found: dict[str, dict[str, Candidate]] = {search: {} for search in searches}
        for row in rows:
            hits = found[row["search"]]
            if row["qid"] not in hits and len(hits) < limit:
                hits[row["qid"]] = Candidate(row["qid"], row["label"], row["description"],
                                             MATCH_NAMES[row["match_rank"]])
        return {search: SearchOutcome(OK, tuple(hits.values()), attempts=1, limit=limit)
                for search, hits in found.items()}

    def details(self, language: str) -> dict:
        """What this run read from the dump, and what the index in use was built from."""
        built_now = self.read_stats.get(language)
        details = {
            "dump_path": str(self.dump_path),
            "dump_fingerprint": self.fingerprint,
            "dump_lines_read": built_now.lines_read if built_now else 0,
            "index_built_this_run": built_now is not None,
        }
        path = self.index_path(language)
        if path.is_file():
            read = json.loads(self._build_info(language).get("read", "{}"))
            details.update({
                "index_path": str(path),
                "index_items": read.get("items_indexed"),
                "index_terms": read.get("terms_indexed"),
                "dump_skipped_by_reason": read.get("skipped_by_reason", {}),
                "dump_truncated_after_lines": read.get("truncated_after_lines"),
                "dump_truncation": read.get("truncation"),
                "dump_corrupt_examples": read.get("examples", []),
                "index_lines_per_second": read.get("lines_per_second"),
            })
        return details

    def _build_info(self, language: str) -> dict[str, str]:
        if language in self._indexes:
            return dict(self._indexes[language].execute("SELECT key, value FROM build_info").fetchall())
        with duckdb.connect(str(self.index_path(language)), read_only=True) as con:
            return dict(con.execute("SELECT key, value FROM build_info").fetchall())

    def close(self) -> None:
        for con in self._indexes.values():
            con.close()
        self._indexes.clear()
