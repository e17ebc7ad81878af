"""A WikiData JSON dump, streamed once into a DuckDB label/alias index, searched like the API.

The official format is one JSON array with one entity per line: `[`, then
`{...},` lines, then `]` (JSON Lines without the brackets is read too). The file is
read as a stream (`.json`, `.json.gz` or `.json.bz2`) and rows go to DuckDB in Arrow
batches of `ITEMS_PER_INSERT` items under a DuckDB memory limit, so memory stays flat
however large the dump is (bench/wikidata.md measures it).

Index (one DuckDB file per dump content and language)::

    items(qid_num, qid, label, description)    label in the language, else the "mul" label
    terms(term, qid_num, match_rank)           normalized labels (rank 0) and aliases (rank 1)

Search is an exact match on the normalized string; hits rank label before alias, then
by numerically smaller QID: QIDs are handed out in creation order, and the items
created first are, on the whole, the prominent ones (Q90 Paris, Q142 France), which is
the order a reader expects among namesakes. The order is total, so runs agree.

Only what search needs is parsed: the official dump writes `claims` (and `sitelinks`)
after `labels`, `descriptions` and `aliases`, and they are most of each line's bytes,
so the line is parsed up to `,"claims":` when that prefix holds all the term fields
(the full line is parsed otherwise). A JSON string cannot contain `,"claims":`
unescaped, so the cut never falls inside a value.

Faults are counted, never fatal: a line that is not JSON or not an entity
(`corrupt_line`), properties, lexemes and other non-item entities, items with no label
or alias in the language. A compressed file that ends early (or a `[` without its
`]`) stops the read: what was read is kept and the run says "truncated after N lines".

Index builds are atomic: the DuckDB file is written under a temporary name and renamed
into place when complete, so a crash mid-build leaves nothing a later run would take
for an index, and the next run builds again from the start. A truncated dump still
yields a complete index (with the truncation recorded and reported on every run that
uses it), because re-reading the same bytes cannot give more; a repaired file has other
content, hence another fingerprint, and gets its own index. The fingerprint is the file
size plus a hash of its first and last MiB, which also catches a gzip/bzip2 trailer
(checksum, length) that changed, and is remembered per (path, size, mtime) so an
unchanged dump is not even opened on later runs.
"""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import json
import logging
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from pipeline.errors import MELUserError
from pipeline.hashing import hash_strings, new_hasher
from pipeline.lake import atomic_path
from pipeline.wikidata.cache import LookupCache
from pipeline.wikidata.normalize import normalize
from pipeline.wikidata.search import OK, CachedSearcher, Candidate, SearchOutcome

INDEX_VERSION = "1"  # bump when the index's content changes for the same dump
OPENERS = {".json.gz": gzip.open, ".json.bz2": bz2.open, ".json": open}
ITEMS_PER_INSERT = 20_000
INDEX_MEMORY_LIMIT = "512MB"
FINGERPRINT_SAMPLE_BYTES = 1 << 20
MAX_EXAMPLES = 5
LABEL, ALIAS = 0, 1
MATCH_NAMES = {LABEL: "label", ALIAS: "alias"}
TERM_FIELDS = frozenset({"type", "id", "labels", "descriptions", "aliases"})
QID = re.compile(r"^Q[1-9][0-9]{0,11}$")
LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]+)*$")
FALLBACK_LANGUAGE = "mul"  # WikiData's language-independent labels and aliases

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


@dataclass
class DumpReadStats:
    lines_read: int = 0
    items_indexed: int = 0
    terms_indexed: int = 0
    skipped: Counter = field(default_factory=Counter)
    truncated_after_lines: int | None = None
    truncation: str | None = None  # what ended the read early
    examples: list[str] = field(default_factory=list)  # the first few skipped lines, with why
    seconds: float = 0.0

    def skip(self, reason: str, line_number: int, detail: str = "") -> None:
        self.skipped[reason] += 1
        if len(self.examples) < MAX_EXAMPLES and reason == "corrupt_line":
            self.examples.append(f"line {line_number}: {detail}"[:200])

    def as_dict(self) -> dict:
        return {
            "lines_read": self.lines_read,
            "items_indexed": self.items_indexed,
            "terms_indexed": self.terms_indexed,
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "truncated_after_lines": self.truncated_after_lines,
            "truncation": self.truncation,
            "examples": self.examples,
            "seconds": round(self.seconds, 3),
            "lines_per_second": round(self.lines_read / self.seconds, 1) if self.seconds else None,
        }


# -- reading the dump ---------------------------------------------------------------------
def dump_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in OPENERS:
        if name.endswith(suffix):
            return suffix
    raise MELUserError(
        f"The WikiData dump {path} is not a .json, .json.gz or .json.bz2 file (setting `dump_path`)."
    )


def check_dump_path(path: Path) -> Path:
    if not path.is_file():
        raise MELUserError(f"The WikiData dump {path} does not exist (setting `dump_path`).")
    dump_suffix(path)
    return path


def dump_fingerprint(path: Path) -> str:
    """Size plus a hash of the first and last MiB: cheap, and it changes with the content."""
    size = path.stat().st_size
    hasher = new_hasher()
    with open(path, "rb") as f:
        hasher.update(f.read(FINGERPRINT_SAMPLE_BYTES))
        f.seek(max(0, size - FINGERPRINT_SAMPLE_BYTES))
        hasher.update(f.read(FINGERPRINT_SAMPLE_BYTES))
    return hash_strings([str(size), hasher.hexdigest()])


def iter_lines(path: Path, stats: DumpReadStats) -> Iterator[tuple[int, bytes]]:
    """(line number, stripped line) for every entity line; counts lines and spots truncation."""
    suffix = dump_suffix(path)
    first = last = b""
    with OPENERS[suffix](path, "rb") as stream:
        try:
            for raw in stream:
                stats.lines_read += 1
                line = raw.strip()
                if not line:
                    continue
                first, last = first or line, line
                if line in (b"[", b"]"):
                    continue
                yield stats.lines_read, line.removesuffix(b",")
        except (EOFError, zlib.error, OSError) as error:  # gzip.BadGzipFile and bz2's errors are OSErrors
            if stats.lines_read == 0:
                raise MELUserError(f"The WikiData dump {path} cannot be read as a {suffix} file ({error}).") from None
            stats.truncated_after_lines, stats.truncation = stats.lines_read, f"{type(error).__name__}: {error}"
            return
    if first == b"[" and last != b"]":
        stats.truncated_after_lines, stats.truncation = stats.lines_read, "the closing ']' is missing"


def parse_entity(line: bytes):
    """The entity on one dump line, parsed only as far as search needs when the layout allows."""
    cut = line.find(b',"claims":')
    if cut > 0:
        try:
            head = json.loads(line[:cut] + b"}")
        except ValueError:
            head = None
        if isinstance(head, dict) and TERM_FIELDS <= head.keys():
            return head
    return json.loads(line)


def skip_reason(entity) -> str | None:
    """None for an item to index, else why the line is skipped."""
    if not isinstance(entity, dict) or "type" not in entity or "id" not in entity:
        return "corrupt_line"
    kind = entity["type"]
    if kind == "item":
        return None if isinstance(entity["id"], str) and QID.match(entity["id"]) else "corrupt_line"
    return kind if kind in ("property", "lexeme") else "other_entity"


def item_terms(entity: dict, language: str) -> tuple[str | None, str | None, dict[str, int]]:
    """(label, description, {normalized term: best match rank}) of an item in `language`."""
    labels, aliases = _mapping(entity.get("labels")), _mapping(entity.get("aliases"))
    terms: dict[str, int] = {}
    label = None
    for code in (language, FALLBACK_LANGUAGE):
        text = _value(labels.get(code))
        if text:
            label = label or text
            _add_term(terms, text, LABEL)
    for code in (language, FALLBACK_LANGUAGE):
        entries = aliases.get(code)
        for entry in entries if isinstance(entries, list) else ():
            text = _value(entry)
            if text:
                _add_term(terms, text, ALIAS)
    description = _value(_mapping(entity.get("descriptions")).get(language))
    return label, description, terms


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}  # the dumps write an empty map as []


def _value(term) -> str | None:
    value = term.get("value") if isinstance(term, dict) else None
    return value if isinstance(value, str) and value.strip() else None


def _add_term(terms: dict[str, int], text: str, rank: int) -> None:
    key = normalize(text)
    if key and rank < terms.get(key, ALIAS + 1):
        terms[key] = rank


# -- building the index -------------------------------------------------------------------
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


# -- searching ----------------------------------------------------------------------------
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
    def source(self) -> str:
        return f"dump:{self.fingerprint}"

    @property
    def kind(self) -> str:
        return "dump"

    def index_path(self, language: str) -> Path:
        if not LANGUAGE_CODE.match(language):
            raise MELUserError(f"The language {language!r} is not a WikiData language code such as 'en' "
                               f"(setting `language`).")
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
