"""Building the DuckDB label/alias index of a WikiData dump, in one streamed pass, atomically.

Rows go to DuckDB in Arrow batches of `ITEMS_PER_INSERT` items under a DuckDB memory
limit, so memory stays flat however large the dump is (bench/wikidata.md measures it).

Index (one DuckDB file per dump content and language)::

    items(qid_num, qid, label, description)    label in the language, else the "mul" label
    terms(term, qid_num, match_rank)           normalized labels (rank 0) and aliases (rank 1)

Index builds are atomic: the DuckDB file is written under a temporary name and renamed
into place when complete, so a crash mid-build leaves nothing a later run would take
for an index, and the next run builds again from the start. A truncated dump still
yields a complete index (with the truncation recorded and reported on every run that
uses it), because re-reading the same bytes cannot give more.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa

from pipeline.atomic import atomic_path
from pipeline.wikidata.dump_read import (
    DumpReadStats,
    item_terms,
    iter_lines,
    parse_entity,
    skip_reason,
)

INDEX_VERSION = "1"  # bump when the index's content changes for the same dump
ITEMS_PER_INSERT = 20_000
INDEX_MEMORY_LIMIT = "512MB"

log = logging.getLogger(__name__)

INDEX_SCHEMA_SQL = """
CREATE TABLE items (qid_num BIGINT, qid VARCHAR, label VARCHAR, description VARCHAR);
CREATE TABLE terms (term VARCHAR, qid_num BIGINT, match_rank UTINYINT);
CREATE TABLE build_info (key VARCHAR, value VARCHAR);
"""
ITEMS_SCHEMA = pa.schema(
    [("qid_num", pa.int64()), ("qid", pa.string()), ("label", pa.string()), ("description", pa.string())]
)
TERMS_SCHEMA = pa.schema([("term", pa.string()), ("qid_num", pa.int64()), ("match_rank", pa.uint8())])


class _BatchWriter:
    """Collects rows in Python lists and appends them to DuckDB as Arrow tables."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con
        self.items: tuple[list, ...] = ([], [], [], [])  # ITEMS_SCHEMA's columns
        self.terms: tuple[list, ...] = ([], [], [])  # TERMS_SCHEMA's columns

    def add(self, qid: str, label, description, terms: dict[str, int]) -> None:
        number = int(qid[1:])
        for column, value in zip(self.items, (number, qid, label, description), strict=True):
            column.append(value)
        term_column, number_column, rank_column = self.terms
        term_column.extend(terms)
        number_column.extend([number] * len(terms))
        rank_column.extend(terms.values())

    def __len__(self) -> int:
        return len(self.items[0])

    def flush(self) -> None:
        for table, columns, schema in (("items", self.items, ITEMS_SCHEMA), ("terms", self.terms, TERMS_SCHEMA)):
            self.con.register("batch", pa.Table.from_arrays(
                [pa.array(values, field.type) for values, field in zip(columns, schema, strict=True)], schema=schema))
            self.con.execute(f"INSERT INTO {table} SELECT * FROM batch")
            self.con.unregister("batch")
            for values in columns:
                values.clear()


def build_index(
    dump_path: Path,
    target: Path,
    language: str,
    *,
    fingerprint: str = "",
    logger=log,
    on_batch: Callable[[DumpReadStats], None] | None = None,
) -> DumpReadStats:
    """Stream `dump_path` into a new DuckDB index at `target`, atomically; return what was read."""
    stats = DumpReadStats()
    started = time.monotonic()
    logger.info(f"Indexing the WikiData dump {dump_path} ({language}) into {target}.")
    with atomic_path(target) as temp:
        con = duckdb.connect(str(temp), config={"memory_limit": INDEX_MEMORY_LIMIT,
                                                "preserve_insertion_order": False})
        try:
            con.execute(INDEX_SCHEMA_SQL)
            _load(con, dump_path, language, stats, logger, on_batch)
            stats.seconds = time.monotonic() - started
            info = {"index_version": INDEX_VERSION, "dump_path": str(dump_path), "fingerprint": fingerprint,
                    "language": language, "built_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                    "read": json.dumps(stats.as_dict())}
            con.executemany("INSERT INTO build_info VALUES (?, ?)", list(info.items()))
        finally:
            con.close()
            Path(f"{temp}.wal").unlink(missing_ok=True)
    _log_build(dump_path, stats, logger)
    return stats


def _load(con, dump_path, language, stats: DumpReadStats, logger, on_batch) -> None:
    writer = _BatchWriter(con)
    last_report = time.monotonic()
    for number, line in iter_lines(dump_path, stats):
        try:
            entity = parse_entity(line)
        except ValueError as error:  # bad JSON or bad UTF-8
            stats.skip("corrupt_line", number, str(error))
            continue
        reason = skip_reason(entity)
        if reason is None:
            label, description, terms = item_terms(entity, language)
            if not terms:
                reason = "no_label_in_language"
        if reason is not None:
            stats.skip(reason, number, "not a WikiData entity" if reason == "corrupt_line" else "")
            continue
        writer.add(entity["id"], label, description, terms)
        stats.items_indexed += 1
        stats.terms_indexed += len(terms)
        if len(writer) >= ITEMS_PER_INSERT:
            writer.flush()
            if on_batch is not None:
                on_batch(stats)
            if time.monotonic() - last_report >= 30:
                logger.info(f"Dump: {stats.lines_read:,} lines read, {stats.items_indexed:,} items indexed.")
                last_report = time.monotonic()
    writer.flush()


def _log_build(dump_path: Path, stats: DumpReadStats, logger) -> None:
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(stats.skipped.items())) or "none"
    logger.info(f"Indexed {stats.items_indexed:,} items from {stats.lines_read:,} lines of {dump_path} "
                f"in {stats.seconds:.1f} s; skipped: {skipped}.")
    if stats.examples:
        logger.warning(f"Corrupt lines in {dump_path} (first {len(stats.examples)}): " + "; ".join(stats.examples))
    if stats.truncated_after_lines is not None:
        logger.warning(f"The WikiData dump {dump_path} is truncated after {stats.truncated_after_lines:,} lines "
                       f"({stats.truncation}); the index holds what came before.")
