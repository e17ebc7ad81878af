"""WikiData API client: `wbsearchentities` per search string, `wbgetentities` for missing descriptions.

Written to Wikimedia's API etiquette: a descriptive User-Agent with a contact, requests
in series (not in parallel) under a global rate limit, `maxlag` so the API can tell a
client to back off when its replicas lag, and retries that honour `Retry-After`.

Faults and what they become:

* 429, 500, 502, 503, 504, `maxlag` / `ratelimited` API errors, timeouts, refused or
  dropped connections, truncated or non-JSON bodies: retried with exponential backoff
  and jitter (or the server's `Retry-After`, seconds or HTTP-date, capped), then
  recorded as a failed lookup with its reason. The run goes on; the next run asks again
  for the failures only, since successes are cached.
* Other 4xx and other API error objects (`{"error": {"code": ...}}` with HTTP 200): the
  request itself is wrong, so retrying cannot help; recorded as failed at once.
* A hit without a description in the language: looked up again with `wbgetentities`
  (the search index can lag behind the item); still none means the item has none, and the
  candidate is kept with a null description. That is an answer, not a failure.

The clock, the sleep and the jitter's random source are injectable so that tests of the
backoff run in milliseconds against a real HTTP server; nothing else is stubbed.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from pipeline.errors import MELUserError
from pipeline.wikidata.cache import LookupCache
from pipeline.wikidata.search import (
    FAILED,
    OK,
    CachedSearcher,
    Candidate,
    SearchOutcome,
)
from pipeline.wikidata.settings import WikidataSettings, default_user_agent

RETRYABLE_HTTP_STATUS = frozenset({429, 500, 502, 503, 504})
RETRYABLE_API_ERRORS = frozenset({"maxlag", "ratelimited"})
MAX_SEARCH_LIMIT = 50  # wbsearchentities' limit for clients without bot rights
MAX_IDS_PER_REQUEST = 50  # wbgetentities' limit likewise
MAXLAG_S = 5  # the value Wikimedia recommends for automated clients
QID = re.compile(r"^Q[1-9][0-9]*$")

log = logging.getLogger(__name__)


class RateLimiter:
    """At most `per_second` calls of `wait()` per second, across threads."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.interval = 1.0 / per_second
        self.clock, self.sleep = clock, sleep
        self._next_slot = float("-inf")
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:  # reserve a slot under the lock, sleep outside it
            now = self.clock()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self.interval
        if slot > now:
            self.sleep(slot - now)


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    now = now or dt.datetime.now(dt.timezone.utc)
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class _Problem:
    reason: str
    status: int | None
    retryable: bool
    retry_after: float | None = None
    detail: str = ""


class LookupFailed(Exception):
    def __init__(self, problem: _Problem, attempts: int):
        super().__init__(f"{problem.reason} after {attempts} attempt(s) {problem.detail}".strip())
        self.problem, self.attempts = problem, attempts

    def outcome(self, limit: int, reason_prefix: str = "") -> SearchOutcome:
        return SearchOutcome(FAILED, reason=reason_prefix + self.problem.reason, attempts=self.attempts,
                             last_status=self.problem.status, limit=limit)


class WikidataAPIClient(CachedSearcher):
    """Searches the WikiData API that `settings` name (endpoint, rate, retries, timeout, User-Agent: an empty
    one is the default); every answer goes through the lookup cache."""

    batch_size = 25  # searches per cache commit: a crash re-asks at most this many
    kind = "api"

    def __init__(
        self,
        cache: LookupCache,
        settings: WikidataSettings,
        *,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        logger=log,
    ):
        super().__init__(cache, logger)
        self.endpoint = settings.endpoint
        self.max_retries, self.timeout_s = settings.max_retries, settings.timeout_s
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.rate_limiter = RateLimiter(settings.requests_per_second, clock, sleep)
        self.session = requests.Session()
        self.user_agent = settings.user_agent or default_user_agent()
        self.session.headers.update({"User-Agent": self.user_agent, "Accept": "application/json"})
        self._warned_placeholder = False

    @property
    def identity(self) -> str:
        return self.endpoint

    def details(self, language: str) -> dict:
        return {"endpoint": self.endpoint, "user_agent": self.user_agent}

    def close(self) -> None:
        self.session.close()

    # -- one batch -------------------------------------------------------------------
    def _lookup(self, searches: list[str], language: str, limit: int) -> dict[str, SearchOutcome]:
        if not 1 <= limit <= MAX_SEARCH_LIMIT:
            raise MELUserError(f"`max_candidates` must be between 1 and {MAX_SEARCH_LIMIT} for the WikiData API "
                               f"(got {limit}).")
        self._warn_about_placeholder_contact()
        outcomes: dict[str, SearchOutcome] = {}
        found: dict[str, tuple[list[Candidate], int]] = {}
        for search in searches:
            try:
                data, attempts = self._get(_search_params(search, language, limit), expect="search")
            except LookupFailed as failure:
                outcomes[search] = failure.outcome(limit)
                continue
            found[search] = (_candidates(data["search"], language), attempts)

        missing = list(dict.fromkeys(c.qid for hits, _ in found.values() for c in hits if c.description is None))
        terms, failed_ids = self._entity_terms(missing, language)
        for search, (hits, attempts) in found.items():
            failure = next((failed_ids[c.qid] for c in hits if c.qid in failed_ids), None)
            if failure is not None:
                outcomes[search] = failure.outcome(limit, reason_prefix="wbgetentities ")
                continue
            completed = tuple(_with_terms(c, terms.get(c.qid)) for c in hits)
            outcomes[search] = SearchOutcome(OK, completed, attempts=attempts, last_status=200, limit=limit)
        return {search: outcomes[search] for search in searches}

    def _entity_terms(self, qids: list[str], language: str):
        """Labels and descriptions of `qids` in `language`, ≤50 ids a request; failures per id."""
        terms: dict[str, tuple[str | None, str | None]] = {}
        failed: dict[str, LookupFailed] = {}
        for start in range(0, len(qids), MAX_IDS_PER_REQUEST):
            chunk = qids[start : start + MAX_IDS_PER_REQUEST]
            try:
                data, _ = self._get(_entities_params(chunk, language), expect="entities")
            except LookupFailed as failure:
                failed.update(dict.fromkeys(chunk, failure))
                continue
            for qid in chunk:
                entity = data["entities"].get(qid)
                terms[qid] = _entity_label_and_description(entity, language)
        return terms, failed

    # -- one request, with retries ------------------------------------------------------
    def _get(self, params: dict, expect: str) -> tuple[dict, int]:
        attempt = 0
        while True:
            attempt += 1
            self.rate_limiter.wait()
            self.stats.http_requests += 1
            problem, data = self._request(params)
            if problem is None and not isinstance(data.get(expect), (list, dict)):
                problem = _Problem("bad_response", 200, True, detail=f"no '{expect}' in the answer")
            if problem is None:
                return data, attempt
            if not problem.retryable or attempt > self.max_retries:
                raise LookupFailed(problem, attempt)
            delay = self._backoff(attempt, problem.retry_after)
            self.logger.debug(f"WikiData {params['action']}: {problem.reason}; retry {attempt} in {delay:.2f} s.")
            self.sleep(delay)

    def _request(self, params: dict) -> tuple[_Problem | None, dict | None]:
        try:
            response = self.session.get(self.endpoint, params=params, timeout=self.timeout_s)
        except requests.Timeout:
            return _Problem("timeout", None, True), None
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as error:
            return _Problem("truncated_body", None, True, detail=str(error)), None
        except requests.ConnectionError as error:
            return _Problem("connection_error", None, True, detail=str(error)), None
        except requests.RequestException as error:
            return _Problem("request_error", None, True, detail=str(error)), None
        return _read_response(response)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        ceiling = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)  # "equal jitter": spread, never near zero

    def _warn_about_placeholder_contact(self) -> None:
        if "example.org" in self.user_agent and not self._warned_placeholder:
            self._warned_placeholder = True
            self.logger.warning(
                "The WikiData User-Agent still names the placeholder contact mel@example.org; set `user_agent` "
                "to your project and e-mail (Wikimedia's User-Agent policy) to avoid being blocked."
            )


def _read_response(response: requests.Response) -> tuple[_Problem | None, dict | None]:
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if status in RETRYABLE_HTTP_STATUS:
        return _Problem(f"http_{status}", status, True, retry_after), None
    if status >= 400:
        return _Problem(f"http_{status}", status, False), None
    try:
        data = json.loads(response.content)
    except ValueError as error:  # HTML error page, cut-off body, bad UTF-8
        return _Problem("bad_json", status, True, detail=str(error)), None
    if not isinstance(data, dict):
        return _Problem("bad_json", status, True, detail="the answer is not a JSON object"), None
    error = data.get("error")
    if error is not None:
        code = str(error.get("code", "unknown")) if isinstance(error, dict) else "unknown"
        info = str(error.get("info", "")) if isinstance(error, dict) else str(error)
        if code in RETRYABLE_API_ERRORS:
            return _Problem(code, status, True, retry_after, detail=info), None
        return _Problem(f"api_error:{code}", status, False, detail=info), None
    return None, data


def _search_params(search: str, language: str, limit: int) -> dict:
    return {"action": "wbsearchentities", "search": search, "language": language, "uselang": language,
            "type": "item", "limit": limit, "format": "json", "formatversion": 2, "maxlag": MAXLAG_S}


def _entities_params(qids: list[str], language: str) -> dict:
    return {"action": "wbgetentities", "ids": "|".join(qids), "props": "labels|descriptions",
            "languages": language, "format": "json", "formatversion": 2, "maxlag": MAXLAG_S}


def _candidates(hits: list, language: str) -> list[Candidate]:
    """Candidates from `wbsearchentities` hits in their order; odd or repeated hits are left out."""
    found, seen = [], set()
    for hit in hits:
        qid = hit.get("id") if isinstance(hit, dict) else None
        if not isinstance(qid, str) or not QID.match(qid) or qid in seen:
            continue
        seen.add(qid)
        found.append(Candidate(qid, _term(hit, "label", language), _term(hit, "description", language), "search"))
    return found


def _term(hit: dict, name: str, language: str) -> str | None:
    """A hit's label or description in `language`: `display` says which language a term is in
    (it may be a fallback language), the plain field is used when `display` is absent."""
    shown = (hit.get("display") or {}).get(name)
    if isinstance(shown, dict):
        value = shown.get("value")
        return value if shown.get("language") == language and isinstance(value, str) and value else None
    value = hit.get(name)
    return value if isinstance(value, str) and value else None


def _entity_label_and_description(entity, language: str) -> tuple[str | None, str | None]:
    if not isinstance(entity, dict) or "missing" in entity:
        return None, None

    def value(field_name):
        term = (entity.get(field_name) or {}).get(language) if isinstance(entity.get(field_name), dict) else None
        return term.get("value") if isinstance(term, dict) and term.get("value") else None

    return value("labels"), value("descriptions")


def _with_terms(candidate: Candidate, terms: tuple[str | None, str | None] | None) -> Candidate:
    if terms is None:
        return candidate
    label, description = terms
    return Candidate(candidate.qid, candidate.label or label, candidate.description or description, candidate.match)
