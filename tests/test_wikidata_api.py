"""The WikiData API client against a local HTTP server that speaks the real API format (`tests.wikidata_fakes`):
its answers, the cache in front of it, batching, the rate limit, its settings."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pyarrow as pa
import pytest

from pipeline.errors import MELUserError
from pipeline.settings import SettingError
from pipeline.wikidata import LookupCache, WikidataSettings, retrieve_candidates
from pipeline.wikidata.api import parse_retry_after
from tests.wikidata_fakes import USER_AGENT, LocalWikidata, Reply, make_client


# -- answers ----------------------------------------------------------------------------
def test_search_returns_candidates_in_api_order_with_labels_and_descriptions(lookup_cache, wikidata, clock):
    client = make_client(lookup_cache, wikidata.url, clock)

    outcome = client.search_many(["Jordan"], "en", 10)["jordan"]

    assert outcome.ok and outcome.attempts == 1 and outcome.last_status == 200
    assert [(c.qid, c.label, c.description, c.match) for c in outcome.candidates] == [
        ("Q810", "Jordan", "country in Western Asia", "search"),
        ("Q7000", "Jordan River", None, "search"),
        ("Q41421", "Michael Jordan", "American basketball player", "search"),
    ]


def test_requests_carry_the_documented_parameters_and_the_user_agent(lookup_cache, wikidata, clock):
    make_client(lookup_cache, wikidata.url, clock).search_many(["Universe"], "en", 7)

    [request] = wikidata.requests
    assert request["params"] == {"action": "wbsearchentities", "search": "universe", "language": "en",
                                 "uselang": "en", "type": "item", "limit": "7", "format": "json",
                                 "formatversion": "2", "maxlag": "5"}
    assert request["headers"]["User-Agent"] == USER_AGENT


def test_the_default_user_agent_names_the_project_and_a_contact(lookup_cache, wikidata, clock):
    client = make_client(lookup_cache, wikidata.url, clock, user_agent="")
    client.search_many(["Universe"], "en", 5)

    sent = wikidata.requests[0]["headers"]["User-Agent"]
    assert sent.startswith("mmoe-mel/") and "@" in sent and "python-requests/" in sent


def test_a_hit_without_description_is_completed_by_wbgetentities(lookup_cache, wikidata, clock):
    wikidata.lagging_descriptions.add("Q810")  # the search index lags behind the item

    outcome = make_client(lookup_cache, wikidata.url, clock).search_many(["Jordan"], "en", 10)["jordan"]

    assert {c.qid: c.description for c in outcome.candidates}["Q810"] == "country in Western Asia"
    assert wikidata.entity_requests() == [["Q810", "Q7000"]]


def test_an_item_without_an_english_description_is_kept_with_a_null_description(lookup_cache, wikidata, clock):
    outcome = make_client(lookup_cache, wikidata.url, clock).search_many(["Jordan River"], "en", 10)["jordan river"]

    assert outcome.ok
    assert [(c.qid, c.description) for c in outcome.candidates] == [("Q7000", None)]
    assert wikidata.entity_requests() == [["Q7000"]]  # asked, and WikiData has none


def test_wbgetentities_asks_for_at_most_50_ids_per_request(lookup_cache, clock):
    items = {f"Q{n}": {"label": f"Name {n}"} for n in range(100, 160)}  # 60 items, none described
    with LocalWikidata(items) as server:
        client = make_client(lookup_cache, server.url, clock)
        client.batch_size = 100  # one batch holds all 60 searches
        client.search_many([f"Name {n}" for n in range(100, 160)], "en", 1)

        sizes = [len(ids) for ids in server.entity_requests()]
    assert sorted(sizes) == [10, 50]


# -- cache, batching, rate --------------------------------------------------------------
def test_distinct_strings_are_asked_once(lookup_cache, wikidata, clock):
    outcomes = make_client(lookup_cache, wikidata.url, clock).search_many(["Jordan", "jordan ", "JORDAN", "«Jordan»"],
                                                                    "en", 5)

    assert wikidata.searched() == ["jordan"]
    assert list(outcomes) == ["jordan"]


def test_a_second_run_makes_no_http_request(lookup_cache, wikidata, clock):
    first = make_client(lookup_cache, wikidata.url, clock).search_many(["Jordan", "Universe"], "en", 10)
    requests_after_first_run = len(wikidata.requests)

    second_client = make_client(lookup_cache, wikidata.url, clock)
    second = second_client.search_many(["Jordan", "Universe"], "en", 10)

    assert len(wikidata.requests) == requests_after_first_run
    assert second_client.stats.http_requests == 0 and second_client.stats.cache_hits == 2
    assert {k: v.candidates for k, v in second.items()} == {k: v.candidates for k, v in first.items()}


def test_a_later_run_asks_again_for_the_failures_only(lookup_cache, wikidata, clock):
    wikidata.fail("universe", *[Reply(503, b"")] * 2)
    first = make_client(lookup_cache, wikidata.url, clock, max_retries=1).search_many(["Jordan", "Universe"], "en", 10)
    wikidata.requests.clear()

    second_client = make_client(lookup_cache, wikidata.url, clock, max_retries=1)
    second = second_client.search_many(["Jordan", "Universe"], "en", 10)

    assert not first["universe"].ok and second["universe"].ok
    assert wikidata.searched() == ["universe"]
    assert second_client.stats.retried_failures == 1 and second_client.stats.cache_hits == 1


def test_a_cached_answer_serves_smaller_limits_and_a_larger_limit_asks_again(lookup_cache, wikidata, clock):
    client = make_client(lookup_cache, wikidata.url, clock)
    client.search_many(["Jordan"], "en", 2)  # 2 of 3 hits: there may be more
    client.search_many(["Jordan"], "en", 1)
    client.search_many(["Jordan"], "en", 5)  # asks again, gets all 3
    client.search_many(["Jordan"], "en", 8)  # 3 < 5 asked for: that was all of them

    assert wikidata.searched() == ["jordan", "jordan"]


def test_requests_are_spaced_by_the_rate_limit(lookup_cache, wikidata, clock):
    make_client(lookup_cache, wikidata.url, clock, requests_per_second=4).search_many(
        ["Jordan", "Universe", "Michael"], "en", 10)

    assert clock.sleeps == pytest.approx([0.25] * (len(wikidata.requests) - 1))


def test_a_crash_mid_run_keeps_the_batches_already_done(lookup_cache, wikidata, clock):
    strings = ["Jordan", "Universe", "Michael", "Jordan River"]
    client = make_client(lookup_cache, wikidata.url, clock)
    client.batch_size = 2

    def crash_on_third_search(seconds):
        if len(wikidata.searched()) == 3:
            raise KeyboardInterrupt  # the process dies while the second batch is in flight
    client.rate_limiter.sleep = crash_on_third_search
    client.rate_limiter.interval = 1.0
    with pytest.raises(KeyboardInterrupt):
        client.search_many(strings, "en", 10)
    wikidata.requests.clear()

    make_client(lookup_cache, wikidata.url, clock).search_many(strings, "en", 10)

    assert wikidata.searched() == ["michael", "jordan river"]


def test_retrieve_candidates_writes_one_row_per_candidate_and_lists_failures(lookup_cache, wikidata, clock):
    wikidata.fail("universe", *[Reply(500, b"")] * 2)
    mentions = pa.table({"mention_id": ["train:1", "train:2", "dev:1", "test:1"],
                         "mention": ["Jordan", "Universe", "Zanzibar", "JORDAN"]})

    client = make_client(lookup_cache, wikidata.url, clock, max_retries=1)
    result = retrieve_candidates(mentions, client, max_candidates=2)

    assert result.table.column("mention_id").to_pylist() == ["train:1", "train:1", "test:1", "test:1"]
    assert result.table.column("rank").to_pylist() == [0, 1, 0, 1]
    assert set(result.table.column("source").to_pylist()) == {"api"}
    assert result.failures.to_pylist() == [{"source": "api", "search": "universe", "language": "en",
                                            "reason": "http_500", "attempts": 2, "last_status": 500}]
    stats = result.stats
    assert (stats["mentions_with_candidates"], stats["mentions_no_match"], stats["mentions_failed_lookup"]) == (2, 1, 1)
    assert stats["distinct_searches"] == 3 and stats["failures_by_reason"] == {"http_500": 1}


# -- settings and helpers ---------------------------------------------------------------
@pytest.mark.parametrize("endpoint", ["www.wikidata.org/w/api.php", "ftp://example.org/api", ""])
def test_an_endpoint_that_is_not_an_http_url_is_a_user_error(endpoint):
    with pytest.raises(SettingError, match=r"^endpoint '.*' is not an http\(s\) URL\.$"):
        WikidataSettings(endpoint=endpoint)


@pytest.mark.parametrize("values, message", [
    (dict(source="web"), "source 'web' is not one of auto, dump, api."),
    (dict(language="English"), "language 'English' is not a WikiData language code such as 'en'."),
    (dict(max_candidates=0), "max_candidates must be 1 or more (got 0)."),
    (dict(requests_per_second=0), "requests_per_second must be above 0 (got 0)."),
    (dict(max_retries=-1), "max_retries must be 0 or more (got -1)."),
    (dict(timeout_s=0), "timeout_s must be above 0 (got 0)."),
])
def test_a_bad_setting_is_refused_in_a_sentence_that_starts_with_its_name(values, message):
    with pytest.raises(SettingError) as raised:
        WikidataSettings(**values)
    assert (raised.value.settings, raised.value.message) == (WikidataSettings, message)


def test_more_than_50_candidates_from_the_api_is_a_user_error(lookup_cache, wikidata, clock):
    with pytest.raises(MELUserError, match="at most|between 1 and 50"):
        make_client(lookup_cache, wikidata.url, clock).search_many(["Jordan"], "en", 51)


def test_retry_after_parsing():
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 31 Dec 2025 23:00:00 GMT", now=now) == 0.0  # in the past: go now
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_a_cache_held_by_another_process_is_a_one_sentence_error(tmp_path):
    path = tmp_path / "wikidata.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb,sys,time; c=duckdb.connect({str(path)!r}); print('ready', flush=True); "
                               f"sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(MELUserError, match="in use by another process"):
            LookupCache(path).count()
    finally:
        holder.communicate("")
