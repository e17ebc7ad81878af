"""The WikiData API client against a local HTTP server that speaks the real API format.

`LocalWikidata` is a real `ThreadingHTTPServer` on 127.0.0.1 that answers
`wbsearchentities` and `wbgetentities` in the JSON shape WikiData uses, from a small
table of items, and can be told to answer a given search string (or `wbgetentities`)
with faults first: 429, 5xx, HTML, cut-off bodies, API error objects, slow answers.
The client's sleep and clock are a fake clock, so backoff waits are recorded, not slept.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
import pytest

from pipeline.errors import MELUserError
from pipeline.wikidata import LookupCache, WikidataAPIClient, retrieve_candidates
from pipeline.wikidata.api import parse_retry_after

USER_AGENT = "mmoe-mel-tests/1 (test suite; tests@localhost)"
ITEMS = {
    "Q41421": {"label": "Michael Jordan", "description": "American basketball player", "aliases": ["Jordan"]},
    "Q810": {"label": "Jordan", "description": "country in Western Asia"},
    "Q1": {"label": "Universe", "description": "totality of space and time"},
    "Q7000": {"label": "Jordan River"},  # no English description at all
}


@dataclass
class Reply:
    status: int = 200
    body: bytes | None = None  # None: the real answer
    headers: dict = field(default_factory=dict)
    delay_s: float = 0.0
    declared_length: int | None = None  # a Content-Length above len(body): the connection is cut


def json_body(value) -> bytes:
    return json.dumps(value).encode()


class LocalWikidata:
    """A WikiData API on loopback: real HTTP, real response format, scripted faults."""

    def __init__(self, items: dict[str, dict] | None = None):
        self.items = dict(items or ITEMS)
        self.lagging_descriptions: set[str] = set()  # described items the search answer omits (index lag)
        self.faults: dict[str, list[Reply]] = defaultdict(list)
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.wikidata = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/w/api.php"

    def __enter__(self) -> LocalWikidata:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail(self, key: str, *replies: Reply) -> None:
        """Answer the next requests for `key` (a search string, or "wbgetentities") with `replies`."""
        self.faults[key].extend(replies)

    def searched(self) -> list[str]:
        return [r["params"]["search"] for r in self.requests if r["params"].get("action") == "wbsearchentities"]

    def entity_requests(self) -> list[list[str]]:
        return [r["params"]["ids"].split("|") for r in self.requests if r["params"].get("action") == "wbgetentities"]

    # -- called by the handler ------------------------------------------------------
    def reply_to(self, params: dict, headers: dict) -> Reply:
        with self._lock:
            self.requests.append({"params": params, "headers": headers})
            action = params.get("action")
            key = params.get("search") if action == "wbsearchentities" else action
            if self.faults.get(key):
                reply = self.faults[key].pop(0)
                return reply if reply.body is not None or reply.status != 200 else Reply(
                    body=self.answer(params), delay_s=reply.delay_s, headers=reply.headers)
        return Reply(body=self.answer(params))

    def answer(self, params: dict) -> bytes:
        if params.get("action") == "wbsearchentities":
            return json_body(self._search(params["search"], params["language"], int(params["limit"])))
        if params.get("action") == "wbgetentities":
            return json_body({"entities": {qid: self._entity(qid) for qid in params["ids"].split("|")}, "success": 1})
        return json_body({"error": {"code": "unknown_action", "info": "Unrecognized value for parameter \"action\""}})

    def _search(self, text: str, language: str, limit: int) -> dict:
        hits = []
        for qid, item in sorted(self.items.items(), key=lambda kv: int(kv[0][1:])):
            names = [("label", item["label"])] + [("alias", a) for a in item.get("aliases", [])]
            matched = next(((kind, name) for kind, name in names if name.casefold().startswith(text.casefold())), None)
            if matched:
                hits.append(self._hit(qid, item, language, *matched))
        return {"searchinfo": {"search": text}, "search": hits[:limit], "success": 1}

    def _hit(self, qid, item, language, match_type, match_text) -> dict:
        hit = {"id": qid, "title": qid, "pageid": int(qid[1:]) + 100,
               "concepturi": f"http://www.wikidata.org/entity/{qid}", "repository": "wikidata",
               "url": f"//www.wikidata.org/wiki/{qid}",
               "display": {"label": {"value": item["label"], "language": language}},
               "label": item["label"],
               "match": {"type": match_type, "language": language, "text": match_text}}
        if item.get("description") and qid not in self.lagging_descriptions:
            hit["display"]["description"] = {"value": item["description"], "language": language}
            hit["description"] = item["description"]
        if match_type == "alias":
            hit["aliases"] = [match_text]
        return hit

    def _entity(self, qid: str) -> dict:
        item = self.items.get(qid)
        if item is None:
            return {"id": qid, "missing": True}
        entity = {"type": "item", "id": qid, "labels": {"en": {"language": "en", "value": item["label"]}},
                  "descriptions": {}}
        if item.get("description"):
            entity["descriptions"]["en"] = {"language": "en", "value": item["description"]}
        return entity


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        params = dict(parse_qsl(urlsplit(self.path).query))
        reply = self.server.wikidata.reply_to(params, dict(self.headers))
        if reply.delay_s:
            time.sleep(reply.delay_s)
        body = reply.body or b""
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(reply.declared_length or len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up first (timeout tests)
            pass
        if reply.declared_length:
            self.close_connection = True

    def log_message(self, *args):
        pass


class FakeClock:
    """The client's clock and sleep: waits are recorded and advance time, nothing sleeps."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def wikidata():
    with LocalWikidata() as server:
        yield server


@pytest.fixture
def cache(tmp_path):
    with LookupCache(tmp_path / "wikidata.duckdb") as cache:
        yield cache


@pytest.fixture
def clock():
    return FakeClock()


def make_client(cache, endpoint, clock, **options) -> WikidataAPIClient:
    settings = dict(endpoint=endpoint, user_agent=USER_AGENT, requests_per_second=1000, max_retries=3,
                    timeout_s=5, sleep=clock.sleep, clock=clock.time, rng=random.Random(0))
    return WikidataAPIClient(cache, **{**settings, **options})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- answers ----------------------------------------------------------------------------
def test_search_returns_candidates_in_api_order_with_labels_and_descriptions(cache, wikidata, clock):
    client = make_client(cache, wikidata.url, clock)

    outcome = client.search_many(["Jordan"], "en", 10)["jordan"]

    assert outcome.ok and outcome.attempts == 1 and outcome.last_status == 200
    assert [(c.qid, c.label, c.description, c.match) for c in outcome.candidates] == [
        ("Q810", "Jordan", "country in Western Asia", "search"),
        ("Q7000", "Jordan River", None, "search"),
        ("Q41421", "Michael Jordan", "American basketball player", "search"),
    ]


def test_requests_carry_the_documented_parameters_and_the_user_agent(cache, wikidata, clock):
    make_client(cache, wikidata.url, clock).search_many(["Universe"], "en", 7)

    [request] = wikidata.requests
    assert request["params"] == {"action": "wbsearchentities", "search": "universe", "language": "en",
                                 "uselang": "en", "type": "item", "limit": "7", "format": "json",
                                 "formatversion": "2", "maxlag": "5"}
    assert request["headers"]["User-Agent"] == USER_AGENT


def test_the_default_user_agent_names_the_project_and_a_contact(cache, wikidata, clock):
    client = make_client(cache, wikidata.url, clock, user_agent="")
    client.search_many(["Universe"], "en", 5)

    sent = wikidata.requests[0]["headers"]["User-Agent"]
    assert sent.startswith("mmoe-mel/") and "@" in sent and "python-requests/" in sent


def test_a_hit_without_description_is_completed_by_wbgetentities(cache, wikidata, clock):
    wikidata.lagging_descriptions.add("Q810")  # the search index lags behind the item

    outcome = make_client(cache, wikidata.url, clock).search_many(["Jordan"], "en", 10)["jordan"]

    assert {c.qid: c.description for c in outcome.candidates}["Q810"] == "country in Western Asia"
    assert wikidata.entity_requests() == [["Q810", "Q7000"]]


def test_an_item_without_an_english_description_is_kept_with_a_null_description(cache, wikidata, clock):
    outcome = make_client(cache, wikidata.url, clock).search_many(["Jordan River"], "en", 10)["jordan river"]

    assert outcome.ok
    assert [(c.qid, c.description) for c in outcome.candidates] == [("Q7000", None)]
    assert wikidata.entity_requests() == [["Q7000"]]  # asked, and WikiData has none


def test_wbgetentities_asks_for_at_most_50_ids_per_request(cache, clock):
    items = {f"Q{n}": {"label": f"Name {n}"} for n in range(100, 160)}  # 60 items, none described
    with LocalWikidata(items) as server:
        client = make_client(cache, server.url, clock)
        client.batch_size = 100  # one batch holds all 60 searches
        client.search_many([f"Name {n}" for n in range(100, 160)], "en", 1)

        sizes = [len(ids) for ids in server.entity_requests()]
    assert sorted(sizes) == [10, 50]


# -- faults -----------------------------------------------------------------------------
def test_429_with_retry_after_in_seconds_is_honoured(cache, wikidata, clock):
    wikidata.fail("universe", Reply(429, b"Too many requests", {"Retry-After": "7"}))

    outcome = make_client(cache, wikidata.url, clock).search_many(["Universe"], "en", 5)["universe"]

    assert outcome.ok and outcome.attempts == 2
    assert 7.0 in clock.sleeps


def test_429_with_retry_after_as_an_http_date_is_honoured(cache, wikidata, clock):
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=30)
    wikidata.fail("universe", Reply(429, b"", {"Retry-After": email.utils.format_datetime(when, usegmt=True)}))

    outcome = make_client(cache, wikidata.url, clock).search_many(["Universe"], "en", 5)["universe"]

    assert outcome.ok
    assert any(25 < wait <= 30 for wait in clock.sleeps)


def test_a_long_retry_after_is_capped(cache, wikidata, clock):
    wikidata.fail("universe", Reply(429, b"", {"Retry-After": "86400"}))

    make_client(cache, wikidata.url, clock, max_backoff_s=20).search_many(["Universe"], "en", 5)

    assert clock.sleeps == [20]


def test_429_without_retry_after_backs_off_exponentially_with_jitter(cache, wikidata, clock):
    wikidata.fail("universe", Reply(429, b""), Reply(429, b""), Reply(429, b""))

    outcome = make_client(cache, wikidata.url, clock, backoff_s=1).search_many(["Universe"], "en", 5)["universe"]

    assert outcome.ok and outcome.attempts == 4
    first, second, third = clock.sleeps
    assert 0.5 <= first <= 1 and 1 <= second <= 2 and 2 <= third <= 4


def test_a_500_then_a_success_is_a_success(cache, wikidata, clock):
    wikidata.fail("universe", Reply(500, b"<html>Internal error</html>"))

    outcome = make_client(cache, wikidata.url, clock).search_many(["Universe"], "en", 5)["universe"]

    assert outcome.ok and outcome.attempts == 2 and outcome.candidates[0].qid == "Q1"


def test_503_until_the_retries_run_out_is_recorded_as_a_failure(cache, wikidata, clock):
    wikidata.fail("universe", *[Reply(503, b"Service Unavailable")] * 4)

    outcome = make_client(cache, wikidata.url, clock, max_retries=3).search_many(["Universe"], "en", 5)["universe"]

    assert (outcome.status, outcome.reason, outcome.attempts, outcome.last_status) == ("failed", "http_503", 4, 503)
    assert cache.count(status="failed") == 1


def test_a_refused_connection_is_recorded_as_a_failure(cache, clock):
    client = make_client(cache, f"http://127.0.0.1:{free_port()}/w/api.php", clock, max_retries=2)

    outcome = client.search_many(["Universe"], "en", 5)["universe"]

    assert (outcome.reason, outcome.attempts, outcome.last_status) == ("connection_error", 3, None)
    assert client.stats.http_requests == 3


def test_a_server_slower_than_the_timeout_is_retried_then_recorded(cache, wikidata, clock):
    wikidata.fail("universe", Reply(delay_s=1.0), Reply(delay_s=1.0))

    outcome = make_client(cache, wikidata.url, clock, timeout_s=0.2, max_retries=1).search_many(
        ["Universe"], "en", 5)["universe"]

    assert (outcome.reason, outcome.attempts) == ("timeout", 2)


def test_a_cut_connection_and_a_truncated_json_body_are_retried(cache, wikidata, clock):
    whole = wikidata.answer({"action": "wbsearchentities", "search": "universe", "language": "en", "limit": "5"})
    wikidata.fail("universe",
                  Reply(body=whole[:20], declared_length=len(whole)),  # the connection closes mid-body
                  Reply(body=whole[:20]))  # complete response, cut-off JSON

    outcome = make_client(cache, wikidata.url, clock).search_many(["Universe"], "en", 5)["universe"]

    assert outcome.ok and outcome.attempts == 3


def test_an_html_page_instead_of_json_fails_as_bad_json(cache, wikidata, clock):
    wikidata.fail("universe", *[Reply(body=b"<!DOCTYPE html><html><body>Maintenance</body></html>")] * 2)

    outcome = make_client(cache, wikidata.url, clock, max_retries=1).search_many(["Universe"], "en", 5)["universe"]

    assert (outcome.reason, outcome.attempts, outcome.last_status) == ("bad_json", 2, 200)


def test_an_api_error_object_fails_at_once_without_retries(cache, wikidata, clock):
    error = {"error": {"code": "badvalue", "info": "Unrecognized value for parameter \"language\"."}}
    wikidata.fail("universe", Reply(body=json_body(error)))

    outcome = make_client(cache, wikidata.url, clock).search_many(["Universe"], "en", 5)["universe"]

    assert (outcome.reason, outcome.attempts) == ("api_error:badvalue", 1)
    assert clock.sleeps == []


def test_a_maxlag_error_waits_as_told_and_retries(cache, wikidata, clock):
    lagged = {"error": {"code": "maxlag", "info": "Waiting for a database server: 7 seconds lagged.", "lag": 7}}
    wikidata.fail("universe", Reply(body=json_body(lagged), headers={"Retry-After": "5"}))

    outcome = make_client(cache, wikidata.url, clock).search_many(["Universe"], "en", 5)["universe"]

    assert outcome.ok and clock.sleeps == [5.0]


def test_a_403_is_not_retried(cache, wikidata, clock):
    wikidata.fail("universe", Reply(403, b"Please set a user-agent"))

    outcome = make_client(cache, wikidata.url, clock).search_many(["Universe"], "en", 5)["universe"]

    assert (outcome.reason, outcome.attempts, outcome.last_status) == ("http_403", 1, 403)


def test_a_failed_wbgetentities_fails_only_the_searches_that_needed_it(cache, wikidata, clock):
    wikidata.fail("wbgetentities", *[Reply(503, b"")] * 2)

    outcomes = make_client(cache, wikidata.url, clock, max_retries=1).search_many(
        ["Jordan River", "Universe"], "en", 5)

    assert outcomes["jordan river"].reason == "wbgetentities http_503"
    assert outcomes["universe"].ok  # its hit had a description: no wbgetentities needed


# -- cache, batching, rate --------------------------------------------------------------
def test_distinct_strings_are_asked_once(cache, wikidata, clock):
    outcomes = make_client(cache, wikidata.url, clock).search_many(["Jordan", "jordan ", "JORDAN", "«Jordan»"],
                                                                    "en", 5)

    assert wikidata.searched() == ["jordan"]
    assert list(outcomes) == ["jordan"]


def test_a_second_run_makes_no_http_request(cache, wikidata, clock):
    first = make_client(cache, wikidata.url, clock).search_many(["Jordan", "Universe"], "en", 10)
    requests_after_first_run = len(wikidata.requests)

    second_client = make_client(cache, wikidata.url, clock)
    second = second_client.search_many(["Jordan", "Universe"], "en", 10)

    assert len(wikidata.requests) == requests_after_first_run
    assert second_client.stats.http_requests == 0 and second_client.stats.cache_hits == 2
    assert {k: v.candidates for k, v in second.items()} == {k: v.candidates for k, v in first.items()}


def test_a_later_run_asks_again_for_the_failures_only(cache, wikidata, clock):
    wikidata.fail("universe", *[Reply(503, b"")] * 2)
    first = make_client(cache, wikidata.url, clock, max_retries=1).search_many(["Jordan", "Universe"], "en", 10)
    wikidata.requests.clear()

    second_client = make_client(cache, wikidata.url, clock, max_retries=1)
    second = second_client.search_many(["Jordan", "Universe"], "en", 10)

    assert not first["universe"].ok and second["universe"].ok
    assert wikidata.searched() == ["universe"]
    assert second_client.stats.retried_failures == 1 and second_client.stats.cache_hits == 1


def test_a_cached_answer_serves_smaller_limits_and_a_larger_limit_asks_again(cache, wikidata, clock):
    client = make_client(cache, wikidata.url, clock)
    client.search_many(["Jordan"], "en", 2)  # 2 of 3 hits: there may be more
    client.search_many(["Jordan"], "en", 1)
    client.search_many(["Jordan"], "en", 5)  # asks again, gets all 3
    client.search_many(["Jordan"], "en", 8)  # 3 < 5 asked for: that was all of them

    assert wikidata.searched() == ["jordan", "jordan"]


def test_requests_are_spaced_by_the_rate_limit(cache, wikidata, clock):
    make_client(cache, wikidata.url, clock, requests_per_second=4).search_many(
        ["Jordan", "Universe", "Michael"], "en", 10)

    assert clock.sleeps == pytest.approx([0.25] * (len(wikidata.requests) - 1))


def test_a_crash_mid_run_keeps_the_batches_already_done(cache, wikidata, clock):
    strings = ["Jordan", "Universe", "Michael", "Jordan River"]
    client = make_client(cache, wikidata.url, clock)
    client.batch_size = 2

    def crash_on_third_search(seconds):
        if len(wikidata.searched()) == 3:
            raise KeyboardInterrupt  # the process dies while the second batch is in flight
    client.rate_limiter.sleep = crash_on_third_search
    client.rate_limiter.interval = 1.0
    with pytest.raises(KeyboardInterrupt):
        client.search_many(strings, "en", 10)
    wikidata.requests.clear()

    make_client(cache, wikidata.url, clock).search_many(strings, "en", 10)

    assert wikidata.searched() == ["michael", "jordan river"]


def test_retrieve_candidates_writes_one_row_per_candidate_and_lists_failures(cache, wikidata, clock):
    wikidata.fail("universe", *[Reply(500, b"")] * 2)
    mentions = pa.table({"mention_id": ["train:1", "train:2", "dev:1", "test:1"],
                         "mention": ["Jordan", "Universe", "Zanzibar", "JORDAN"]})

    result = retrieve_candidates(mentions, make_client(cache, wikidata.url, clock, max_retries=1), max_candidates=2)

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
def test_an_endpoint_that_is_not_an_http_url_is_a_user_error(cache, endpoint):
    with pytest.raises(MELUserError, match="setting `endpoint`"):
        WikidataAPIClient(cache, endpoint=endpoint)


def test_more_than_50_candidates_from_the_api_is_a_user_error(cache, wikidata, clock):
    with pytest.raises(MELUserError, match="at most|between 1 and 50"):
        make_client(cache, wikidata.url, clock).search_many(["Jordan"], "en", 51)


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
