"""The DuckDB cache of WikiData lookups: one row per (source, normalized search, language).

Both sources write through it (see `search.CachedSearcher`), so a second run asks
neither the API nor the dump anything it has answered before. Failed lookups are
stored too, with their reason, attempt count and last HTTP status: the failures
table can be rebuilt from the cache, and the next run asks again for exactly those.

Each `put` is one transaction, committed (DuckDB's WAL is synced on commit) before
the next batch is looked up. Concurrent runs share the file: each operation opens it
under an inter-process lock (`lake.SharedDuckDB`), so they take turns instead of
failing on DuckDB's one-writer file lock.

The cache also remembers, per dump file (path, size, mtime), the cheap content
fingerprint that names its index, so an unchanged dump is not opened at all.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.lake import SharedDuckDB
from pipeline.wikidata.search import Candidate, SearchOutcome

CANDIDATE_TYPE = pa.struct(
    [("qid", pa.string()), ("label", pa.string()), ("description", pa.string()), ("match", pa.string())]
)

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS lookups (
    source VARCHAR NOT NULL,      -- 'api:<endpoint>' or 'dump:<content fingerprint>'
    search VARCHAR NOT NULL,      -- normalized search string
    language VARCHAR NOT NULL,
    status VARCHAR NOT NULL,      -- 'ok' | 'failed'
    result_limit INTEGER NOT NULL,
    candidates STRUCT(qid VARCHAR, label VARCHAR, description VARCHAR, match VARCHAR)[],
    reason VARCHAR,
    attempts INTEGER,
    last_status INTEGER,
    looked_up_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (source, search, language)
);
CREATE TABLE IF NOT EXISTS dump_fingerprints (
    path VARCHAR PRIMARY KEY, size BIGINT, mtime_ns BIGINT, fingerprint VARCHAR
);
CREATE TABLE IF NOT EXISTS dump_indexes (
    dump_path VARCHAR, language VARCHAR, index_file VARCHAR, built_at TIMESTAMPTZ,
    PRIMARY KEY (dump_path, language)
);
"""

_LOOKUP_COLUMNS = pa.schema(
    [
        ("source", pa.string()),
        ("search", pa.string()),
        ("language", pa.string()),
        ("status", pa.string()),
        ("result_limit", pa.int32()),
        ("candidates", pa.list_(CANDIDATE_TYPE)),
        ("reason", pa.string()),
        ("attempts", pa.int32()),
        ("last_status", pa.int32()),
    ]
)


class LookupCache(SharedDuckDB):
    label = "WikiData cache"
    schema_sql = SCHEMA_SQL

    # -- lookups -------------------------------------------------------------------
    def get(self, source: str, searches: list[str], language: str) -> dict[str, SearchOutcome]:
        if not searches:
            return {}
        with self.connect() as con:
            con.register("wanted", pa.table({"search": pa.array(searches, pa.string())}))
            rows = pa.table(
                con.sql(
                    """SELECT l.search, l.status, l.result_limit, l.candidates, l.reason, l.attempts, l.last_status
                       FROM lookups l JOIN wanted USING (search)
                       WHERE l.source = $source AND l.language = $language""",
                    params={"source": source, "language": language},
                )
            ).to_pylist()
        return {row["search"]: _outcome(row) for row in rows}

    def put(self, source: str, language: str, limit: int, outcomes: dict[str, SearchOutcome]) -> None:
        if not outcomes:
            return
        batch = pa.table(
            {
                "source": [source] * len(outcomes),
                "search": list(outcomes),
                "language": [language] * len(outcomes),
                "status": [o.status for o in outcomes.values()],
                "result_limit": [limit] * len(outcomes),
                "candidates": [[vars(c) for c in o.candidates] for o in outcomes.values()],
                "reason": [o.reason for o in outcomes.values()],
                "attempts": [o.attempts for o in outcomes.values()],
                "last_status": [o.last_status for o in outcomes.values()],
            },
            schema=_LOOKUP_COLUMNS,
        )
        with self.connect() as con:
            con.register("batch", batch)
            con.execute("INSERT OR REPLACE INTO lookups SELECT *, now() FROM batch")

    def count(self, source: str | None = None, status: str | None = None) -> int:
        query = "SELECT count(*) FROM lookups WHERE ($source IS NULL OR source = $source) " \
                "AND ($status IS NULL OR status = $status)"
        with self.connect() as con:
            [(count,)] = con.execute(query, {"source": source, "status": status}).fetchall()
        return count

    # -- dump bookkeeping -----------------------------------------------------------
    def remembered_fingerprint(self, path: str, size: int, mtime_ns: int) -> str | None:
        with self.connect() as con:
            rows = con.execute(
                "SELECT fingerprint FROM dump_fingerprints WHERE path = ? AND size = ? AND mtime_ns = ?",
                [path, size, mtime_ns],
            ).fetchall()
        return rows[0][0] if rows else None

    def remember_fingerprint(self, path: str, size: int, mtime_ns: int, fingerprint: str) -> None:
        with self.connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO dump_fingerprints VALUES (?, ?, ?, ?)", [path, size, mtime_ns, fingerprint]
            )

    def replace_index_record(self, dump_path: str, language: str, index_file: str) -> str | None:
        """Record the index now serving (dump_path, language); return the one it replaces."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT index_file FROM dump_indexes WHERE dump_path = ? AND language = ?", [dump_path, language]
            ).fetchall()
            con.execute(
                "INSERT OR REPLACE INTO dump_indexes VALUES (?, ?, ?, now())", [dump_path, language, index_file]
            )
        previous = rows[0][0] if rows else None
        return previous if previous != index_file else None




def _outcome(row: dict) -> SearchOutcome:
    return SearchOutcome(
        status=row["status"],
        candidates=tuple(Candidate(**c) for c in row["candidates"] or ()),
        reason=row["reason"],
        attempts=row["attempts"] or 0,
        last_status=row["last_status"],
        limit=row["result_limit"],
        from_cache=True,
    )
