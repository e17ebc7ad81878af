"""The WikiData API client's faults, against a local HTTP server (`tests.wikidata_fakes`): retries, backoff,
`Retry-After`, and what it records when the retries run out."""

from __future__ import annotations

import datetime as dt
import email.utils

from tests.wikidata_fakes import Reply, free_port, json_body, make_client


# -- faults -----------------------------------------------------------------------------
def test_429_with_retry_after_in_seconds_is_honoured(lookup_cache, wikidata, clock):
    wikidata.fail("universe", Reply(429, b"Too many requests", {"Retry-After": "7"}))

    outcome = make_client(lookup_cache, wikidata.url, clock).search_many(["Universe"], "en", 5)["universe"]

    assert outcome.ok and outcome.attempts == 2
    assert 7.0 in clock.sleeps


def test_429_with_retry_after_as_an_http_date_is_honoured(lookup_cache, wikidata, clock):
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=30)
    wikidata.fail("universe", Reply(429, b"", {"Retry-After": email.utils.format_datetime(when, usegmt=True)}))

    outcome = make_client(lookup_cache, wikidata.url, clock).search_many(["Universe"], "en", 5)["universe"]

    assert outcome.ok
    assert any(25 < wait <= 30 for wait in clock.sleeps)


def test_a_long_retry_after_is_capped(lookup_cache, wikidata, clock):
    wikidata.fail("universe", Reply(429, b"", {"Retry-After": "86400"}))

    make_client(lookup_cache, wikidata.url, clock, max_backoff_s=20).search_many(["Universe"], "en", 5)

    assert clock.sleeps == [20]


def test_429_without_retry_after_backs_off_exponentially_with_jitter(lookup_cache, wikidata, clock):
    wikidata.fail("universe", Reply(429, b""), Reply(429, b""), Reply(429, b""))

    outcome = make_client(lookup_cache, wikidata.url, clock, backoff_s=1).search_many(["Universe"], "en", 5)["universe"]

    assert outcome.ok and outcome.attempts == 4
    first, second, third = clock.sleeps
    assert 0.5 <= first <= 1 and 1 <= second <= 2 and 2 <= third <= 4


def test_a_500_then_a_success_is_a_success(lookup_cache, wikidata, clock):
    wikidata.fail("universe", Reply(500, b"<html>Internal error</html>"))

    outcome = make_client(lookup_cache, wikidata.url, clock).search_many(["Universe"], "en", 5)["universe"]

    assert outcome.ok and outcome.attempts == 2 and outcome.candidates[0].qid == "Q1"


def test_503_until_the_retries_run_out_is_recorded_as_a_failure(lookup_cache, wikidata, clock):
    wikidata.fail("universe", *[Reply(503, b"Service Unavailable")] * 4)

    client = make_client(lookup_cache, wikidata.url, clock, max_retries=3)
    outcome = client.search_many(["Universe"], "en", 5)["universe"]

    assert (outcome.status, outcome.reason, outcome.attempts, outcome.last_status) == ("failed", "http_503", 4, 503)
    assert lookup_cache.count(status="failed") == 1


def test_a_refused_connection_is_recorded_as_a_failure(lookup_cache, clock):
    client = make_client(lookup_cache, f"http://127.0.0.1:{free_port()}/w/api.php", clock, max_retries=2)

    outcome = client.search_many(["Universe"], "en", 5)["universe"]

    assert (outcome.reason, outcome.attempts, outcome.last_status) == ("connection_error", 3, None)
    assert client.stats.http_requests == 3


def test_a_server_slower_than_the_timeout_is_retried_then_recorded(lookup_cache, wikidata, clock):
    wikidata.fail("universe", Reply(delay_s=1.0), Reply(delay_s=1.0))

    outcome = make_client(lookup_cache, wikidata.url, clock, timeout_s=0.2, max_retries=1).search_many(
        ["Universe"], "en", 5)["universe"]

    assert (outcome.reason, outcome.attempts) == ("timeout", 2)


def test_a_cut_connection_and_a_truncated_json_body_are_retried(lookup_cache, wikidata, clock):
    whole = wikidata.answer({"action": "wbsearchentities", "search": "universe", "language": "en", "limit": "5"})
    wikidata.fail("universe",
                  Reply(body=whole[:20], declared_length=len(whole)),  # the connection closes mid-body
                  Reply(body=whole[:20]))  # complete response, cut-off JSON

    outcome = make_client(lookup_cache, wikidata.url, clock).search_many(["Universe"], "en", 5)["universe"]

    assert outcome.ok and outcome.attempts == 3


def test_an_html_page_instead_of_json_fails_as_bad_json(lookup_cache, wikidata, clock):
    wikidata.fail("universe", *[Reply(body=b"<!DOCTYPE html><html><body>Maintenance</body></html>")] * 2)

    client = make_client(lookup_cache, wikidata.url, clock, max_retries=1)
    outcome = client.search_many(["Universe"], "en", 5)["universe"]

    assert (outcome.reason, outcome.attempts, outcome.last_status) == ("bad_json", 2, 200)


def test_an_api_error_object_fails_at_once_without_retries(lookup_cache, wikidata, clock):
    error = {"error": {"code": "badvalue", "info": "Unrecognized value for parameter \"language\"."}}
    wikidata.fail("universe", Reply(body=json_body(error)))

    outcome = make_client(lookup_cache, wikidata.url, clock).search_many(["Universe"], "en", 5)["universe"]

    assert (outcome.reason, outcome.attempts) == ("api_error:badvalue", 1)
    assert clock.sleeps == []


def test_a_maxlag_error_waits_as_told_and_retries(lookup_cache, wikidata, clock):
    lagged = {"error": {"code": "maxlag", "info": "Waiting for a database server: 7 seconds lagged.", "lag": 7}}
    wikidata.fail("universe", Reply(body=json_body(lagged), headers={"Retry-After": "5"}))

    outcome = make_client(lookup_cache, wikidata.url, clock).search_many(["Universe"], "en", 5)["universe"]

    assert outcome.ok and clock.sleeps == [5.0]


def test_a_403_is_not_retried(lookup_cache, wikidata, clock):
    wikidata.fail("universe", Reply(403, b"Please set a user-agent"))

    outcome = make_client(lookup_cache, wikidata.url, clock).search_many(["Universe"], "en", 5)["universe"]

    assert (outcome.reason, outcome.attempts, outcome.last_status) == ("http_403", 1, 403)


def test_a_failed_wbgetentities_fails_only_the_searches_that_needed_it(lookup_cache, wikidata, clock):
    wikidata.fail("wbgetentities", *[Reply(503, b"")] * 2)

    outcomes = make_client(lookup_cache, wikidata.url, clock, max_retries=1).search_many(
        ["Jordan River", "Universe"], "en", 5)

    assert outcomes["jordan river"].reason == "wbgetentities http_503"
    assert outcomes["universe"].ok  # its hit had a description: no wbgetentities needed
