"""The WikiData dump: streamed into a DuckDB label/alias index once, searched like the API."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import unicodedata
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.errors import MELUserError
from pipeline.wikidata import DumpIndex, LookupCache, build_index, normalize
from pipeline.wikidata.dump_read import parse_entity
from pipeline.wikidata.normalize import _strip_punctuation
from tests.wikidata_fakes import item, write_dump

REPO = Path(__file__).resolve().parents[1]


PROPERTY = {"type": "property", "datatype": "wikibase-item", "id": "P31",
            "labels": {"en": {"language": "en", "value": "Jordan"}}, "descriptions": {}, "aliases": {}, "claims": {}}
LEXEME = {"type": "lexeme", "id": "L1", "lemmas": {"en": {"language": "en", "value": "jordan"}},
          "lexicalCategory": "Q1084", "language": "Q1860", "claims": {}, "forms": [], "senses": []}
ENTITIES = [
    item("Q1", "Universe", "totality of space and time"),
    PROPERTY,
    item("Q41421", "Michael Jordan", "American basketball player", aliases=["Jordan", "MJ"]),
    item("Q810", "Jordan", "country in Western Asia"),
    LEXEME,
    item("Q3308285", "Jordan", "given name", aliases=["jordan"]),
]


@pytest.fixture
def lake_dir(tmp_path) -> Path:
    return tmp_path / "lake"


@contextmanager
def dump_index(dump: Path, lake_dir: Path):
    with LookupCache(lake_dir / "wikidata.duckdb") as cache:
        index = DumpIndex(dump, cache, lake_dir / "indexes")
        try:
            yield index
        finally:
            index.close()


def search(dump: Path, lake_dir: Path, strings, limit=10, language="en"):
    """Outcomes and source details of one run over `strings`."""
    with dump_index(dump, lake_dir) as index:
        outcomes = index.search_many(strings, language, limit)
        return outcomes, index.details(language)


def hits(outcome) -> list[tuple[str, str]]:
    return [(c.qid, c.match) for c in outcome.candidates]


# -- normalization ------------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected", [
    ("  Michael   Jordan ", "michael jordan"),
    ("ＪＯＲＤＡＮ", "jordan"),  # full-width letters (NFKC)
    ("Straße", "strasse"),  # casefold, not lower()
    ("«Le Monde»,", "le monde"),  # surrounding punctuation
    ("U.S.", "u.s"),  # inner punctuation stays
    ("?!", "?!"),  # nothing but punctuation: kept, still a query
    ("   ", ""),
])
def test_normalize(raw, expected):
    assert normalize(raw) == expected
    assert normalize(expected) == expected  # idempotent: keys stay keys


def test_the_ascii_shortcut_of_normalize_agrees_with_the_general_path():
    rng = random.Random(0)
    for _ in range(20_000):
        text = "".join(chr(rng.randrange(128)) for _ in range(rng.randint(0, 8)))
        general = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
        collapsed = " ".join(general.split())
        assert normalize(text) == (_strip_punctuation(collapsed) or collapsed), repr(text)


# -- formats and search -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dump.json", "dump.json.gz", "dump.json.bz2"])
def test_each_dump_format_is_indexed_and_searched(tmp_path, lake_dir, name):
    dump = write_dump(tmp_path / name, ENTITIES)

    outcomes, details = search(dump, lake_dir, ["Universe"])

    [candidate] = outcomes["universe"].candidates
    assert (candidate.qid, candidate.label, candidate.description, candidate.match) == (
        "Q1", "Universe", "totality of space and time", "label")
    assert details["dump_lines_read"] == len(ENTITIES) + 2


def test_label_matches_rank_before_alias_matches_then_smaller_qid_first(tmp_path, lake_dir):
    dump = write_dump(tmp_path / "dump.json.gz", ENTITIES)

    outcomes, _ = search(dump, lake_dir, ["jordan"])

    assert hits(outcomes["jordan"]) == [("Q810", "label"), ("Q3308285", "label"), ("Q41421", "alias")]


def test_an_item_matching_by_label_and_alias_is_one_candidate(tmp_path, lake_dir):
    dump = write_dump(tmp_path / "dump.json.gz", ENTITIES)  # Q3308285: label "Jordan", alias "jordan"

    outcomes, _ = search(dump, lake_dir, ["Jordan"])

    assert [qid for qid, _ in hits(outcomes["jordan"])].count("Q3308285") == 1


def test_an_item_repeated_in_the_dump_is_one_candidate(tmp_path, lake_dir):
    dump = write_dump(tmp_path / "dump.json", [item("Q810", "Jordan"), item("Q810", "Jordan"), item("Q900", "Jordan")])

    outcomes, _ = search(dump, lake_dir, ["jordan"], limit=2)

    assert hits(outcomes["jordan"]) == [("Q810", "label"), ("Q900", "label")]


def test_at_most_limit_candidates_are_returned(tmp_path, lake_dir):
    dump = write_dump(tmp_path / "dump.json.gz", ENTITIES)

    outcomes, _ = search(dump, lake_dir, ["jordan"], limit=2)

    assert hits(outcomes["jordan"]) == [("Q810", "label"), ("Q3308285", "label")]


def test_search_is_insensitive_to_case_width_and_surrounding_punctuation(tmp_path, lake_dir):
    dump = write_dump(tmp_path / "dump.json", [
        item("Q9", "Ｑｕｅｅｎ", "British rock band"), item("Q12", "Le Monde", "French newspaper"),
        item("Q13", "Straße", "road")])

    outcomes, _ = search(dump, lake_dir, ["QUEEN", "«le monde»", "STRASSE"])

    assert [outcomes[key].candidates[0].qid for key in ("queen", "le monde", "strasse")] == ["Q9", "Q12", "Q13"]


def test_mul_labels_are_used_when_the_language_has_none(tmp_path, lake_dir):
    berlin = item("Q64", description="capital of Germany",
                  labels={"mul": {"language": "mul", "value": "Berlin"}, "de": {"language": "de", "value": "Berlin"}})
    dump = write_dump(tmp_path / "dump.json", [berlin])

    outcomes, _ = search(dump, lake_dir, ["berlin"])

    [candidate] = outcomes["berlin"].candidates
    assert (candidate.qid, candidate.label, candidate.match) == ("Q64", "Berlin", "label")


def test_description_is_null_when_the_item_has_none_in_the_language(tmp_path, lake_dir):
    only_german = item("Q5", "Jordan")
    only_german["descriptions"] = {"de": {"language": "de", "value": "Staat in Vorderasien"}}
    dump = write_dump(tmp_path / "dump.json", [only_german])

    outcomes, _ = search(dump, lake_dir, ["jordan"])

    assert outcomes["jordan"].candidates[0].description is None


def test_empty_maps_written_as_lists_are_read(tmp_path, lake_dir):
    line = ('{"type":"item","id":"Q5","labels":{"en":{"language":"en","value":"human"}},'
            '"descriptions":[],"aliases":[],"claims":[],"sitelinks":[]}')
    dump = write_dump(tmp_path / "dump.json", [line])

    outcomes, _ = search(dump, lake_dir, ["human"])

    assert [(c.qid, c.description) for c in outcomes["human"].candidates] == [("Q5", None)]


def test_a_string_with_no_match_has_no_candidates(tmp_path, lake_dir):
    dump = write_dump(tmp_path / "dump.json", ENTITIES)

    outcomes, _ = search(dump, lake_dir, ["Zanzibar"])

    assert outcomes["zanzibar"].ok and outcomes["zanzibar"].candidates == ()


def test_the_line_is_parsed_only_up_to_the_claims_when_the_terms_come_first():
    line = json.dumps(item("Q1", "Universe"), separators=(",", ":")).encode()
    claims_first = json.dumps({"type": "item", "id": "Q2", "claims": {}, "labels": {"en": {"value": "Earth"}},
                               "descriptions": {}, "aliases": {}}, separators=(",", ":")).encode()

    assert "claims" not in parse_entity(line) and parse_entity(line)["labels"]["en"]["value"] == "Universe"
    assert parse_entity(claims_first)["labels"]["en"]["value"] == "Earth"  # falls back to the whole line


# -- bad input ----------------------------------------------------------------------------
def test_non_items_are_skipped_and_counted(tmp_path, lake_dir):
    mediainfo = {"type": "mediainfo", "id": "M1", "labels": {}, "descriptions": {}}
    dump = write_dump(tmp_path / "dump.json.gz", ENTITIES + [mediainfo])

    outcomes, details = search(dump, lake_dir, ["jordan"])

    assert all(c.qid.startswith("Q") for c in outcomes["jordan"].candidates)
    assert details["dump_skipped_by_reason"] == {"lexeme": 1, "other_entity": 1, "property": 1}
    assert details["index_items"] == 4


def test_corrupt_lines_are_skipped_counted_and_located(tmp_path, lake_dir):
    entries = [item("Q1", "Universe"), '{"type":"item","id":"Q2","labels":{"en":', "not json at all",
               '["a list"]', '{"type":"item","id":"X9","labels":{}}', item("Q3", "Earth")]
    dump = write_dump(tmp_path / "dump.json.gz", entries)

    outcomes, details = search(dump, lake_dir, ["universe", "earth"])

    assert outcomes["universe"].candidates and outcomes["earth"].candidates
    assert details["dump_skipped_by_reason"] == {"corrupt_line": 4}
    assert details["dump_corrupt_examples"][0].startswith("line 3:")


def test_items_without_label_or_alias_in_the_language_are_counted(tmp_path, lake_dir):
    dump = write_dump(tmp_path / "dump.json", [item("Q1", "Universe"), item("Q2", "Erde", language="de")])

    _, details = search(dump, lake_dir, ["universe"])

    assert details["dump_skipped_by_reason"] == {"no_label_in_language": 1}


@pytest.mark.parametrize("suffix", [".json.gz", ".json.bz2"])
def test_a_truncated_compressed_file_keeps_what_came_before_and_says_where_it_stopped(tmp_path, lake_dir, suffix):
    entries = [item(f"Q{n}", f"Name {n}", f"description {n} " + "x" * 200) for n in range(1, 1000)]
    whole = write_dump(tmp_path / f"whole{suffix}", entries).read_bytes()
    dump = tmp_path / f"dump{suffix}"
    dump.write_bytes(whole[: len(whole) // 2])

    outcomes, details = search(dump, lake_dir, ["Name 1", "Name 999"])

    assert outcomes["name 1"].candidates and not outcomes["name 999"].candidates
    assert 1 < details["dump_truncated_after_lines"] < 1000
    assert "EOFError" in details["dump_truncation"]


def test_a_missing_closing_bracket_is_reported_as_truncation(tmp_path, lake_dir):
    dump = write_dump(tmp_path / "dump.json", [item("Q1", "Universe")], closing=False)

    _, details = search(dump, lake_dir, ["universe"])

    assert details["dump_truncated_after_lines"] == 2 and "']'" in details["dump_truncation"]


def test_a_file_that_is_not_gzip_is_a_user_error(tmp_path, lake_dir):
    dump = tmp_path / "dump.json.gz"
    dump.write_text("[\n]\n")

    with pytest.raises(MELUserError, match="cannot be read as a .json.gz file"):
        search(dump, lake_dir, ["universe"])


@pytest.mark.parametrize("name, message", [("missing.json.gz", "does not exist"),
                                           ("dump.xml", "not a .json, .json.gz or .json.bz2")])
def test_a_bad_dump_path_is_a_user_error(tmp_path, lake_dir, name, message):
    if name == "dump.xml":
        (tmp_path / name).write_text("<xml/>")
    with pytest.raises(MELUserError, match=message):
        search(tmp_path / name, lake_dir, ["universe"])


# -- caching and rebuilds -----------------------------------------------------------------
def test_a_second_run_does_not_read_the_dump_again(tmp_path, lake_dir):
    dump = write_dump(tmp_path / "dump.json.gz", ENTITIES)
    first, first_details = search(dump, lake_dir, ["jordan"])

    with dump_index(dump, lake_dir) as index:
        second = index.search_many(["jordan"], "en", 10)
        new_string = index.search_many(["universe"], "en", 10)  # not cached: answered by the index
        details = index.details("en")

    assert first_details["dump_lines_read"] == 8 and details["dump_lines_read"] == 0
    assert second["jordan"].from_cache and second["jordan"].candidates == first["jordan"].candidates
    assert new_string["universe"].candidates[0].qid == "Q1" and not new_string["universe"].from_cache
    assert index.stats.cache_hits == 1 and index.stats.looked_up == 1


def test_touching_the_dump_without_changing_it_reuses_the_index(tmp_path, lake_dir):
    dump = write_dump(tmp_path / "dump.json.gz", ENTITIES)
    search(dump, lake_dir, ["jordan"])
    os.utime(dump, (1_000_000, 1_000_000))

    _, details = search(dump, lake_dir, ["universe"])

    assert details["dump_lines_read"] == 0


def test_a_changed_dump_is_indexed_anew_and_the_old_index_removed(tmp_path, lake_dir):
    dump = write_dump(tmp_path / "dump.json.gz", ENTITIES)
    _, old = search(dump, lake_dir, ["jordan"])
    write_dump(dump, ENTITIES + [item("Q99", "Jordan", "river in the Middle East")])

    outcomes, new = search(dump, lake_dir, ["jordan"])

    assert new["dump_fingerprint"] != old["dump_fingerprint"] and new["dump_lines_read"] == 9
    assert "Q99" in [c.qid for c in outcomes["jordan"].candidates]  # not the old cached answer
    assert not Path(old["index_path"]).exists()


def test_an_unreadable_index_is_rebuilt(tmp_path, lake_dir):
    dump = write_dump(tmp_path / "dump.json.gz", ENTITIES)
    _, first = search(dump, lake_dir, ["jordan"])
    Path(first["index_path"]).write_bytes(b"not a duckdb file")

    outcomes, again = search(dump, lake_dir, ["universe"])

    assert again["dump_lines_read"] == 8 and outcomes["universe"].candidates[0].qid == "Q1"


def test_a_truncated_dump_is_read_once_and_a_repaired_one_gets_its_own_index(tmp_path, lake_dir):
    entries = [item(f"Q{n}", f"Name {n}", "x" * 200) for n in range(1, 400)]
    whole = write_dump(tmp_path / "whole.json.gz", entries).read_bytes()
    dump = tmp_path / "dump.json.gz"
    dump.write_bytes(whole[: len(whole) // 2])
    search(dump, lake_dir, ["Name 1"])

    _, again = search(dump, lake_dir, ["Name 2"])  # same bytes: re-reading cannot give more
    dump.write_bytes(whole)
    outcomes, repaired = search(dump, lake_dir, ["Name 399"])

    assert again["dump_lines_read"] == 0 and again["dump_truncated_after_lines"] is not None
    assert repaired["dump_lines_read"] == 401 and repaired["dump_truncated_after_lines"] is None
    assert outcomes["name 399"].candidates


def test_a_failing_build_leaves_no_index_behind(tmp_path):
    dump = write_dump(tmp_path / "dump.json", [item(f"Q{n}", f"Name {n}") for n in range(1, 50)])
    target = tmp_path / "index.duckdb"

    def fail(stats):
        raise RuntimeError("disk full")
    import pipeline.wikidata.dump_build as dump_module
    original, dump_module.ITEMS_PER_INSERT = dump_module.ITEMS_PER_INSERT, 10
    try:
        with pytest.raises(RuntimeError):
            build_index(dump, target, "en", on_batch=fail)
    finally:
        dump_module.ITEMS_PER_INSERT = original

    assert list(tmp_path.iterdir()) == [dump]


def test_a_build_killed_mid_way_is_not_taken_for_an_index_and_is_redone(tmp_path):
    dump = write_dump(tmp_path / "dump.json", [item(f"Q{n}", f"Name {n}") for n in range(1, 500)])
    target = tmp_path / "index" / "index.duckdb"
    killed_mid_build = (
        "import os, signal, sys; from pathlib import Path; import pipeline.wikidata.dump_build as d; "
        "d.ITEMS_PER_INSERT = 100; "
        "d.build_index(Path(sys.argv[1]), Path(sys.argv[2]), 'en', "
        "on_batch=lambda stats: os.kill(os.getpid(), signal.SIGKILL))"
    )
    process = subprocess.run([sys.executable, "-c", killed_mid_build, str(dump), str(target)], cwd=REPO)
    assert process.returncode == -9
    assert not target.exists() and list(target.parent.iterdir())  # only the dead build's temporary file

    stats = build_index(dump, target, "en")

    assert stats.items_indexed == 499 and stats.lines_read == 501
    assert [p.name for p in target.parent.iterdir()] == ["index.duckdb"]  # the leftover is cleaned up
