"""Fakes of WikiData for the tests: its API on a local HTTP server, and dumps in the official layout.

`LocalWikidata` is a real `ThreadingHTTPServer` on 127.0.0.1 that answers
`wbsearchentities` and `wbgetentities` in the JSON shape WikiData uses, from a small
table of items, and can be told to answer a given search string (or `wbgetentities`)
with faults first: 429, 5xx, HTML, cut-off bodies, API error objects, slow answers.
The client's sleep and clock are a fake clock, so backoff waits are recorded, not slept.
`item` and `write_dump` write a dump the way WikiData publishes one.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import json
import random
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from pipeline.wikidata import WikidataAPIClient, WikidataSettings

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


SETTING_NAMES = {f.name for f in dataclasses.fields(WikidataSettings)}


def make_client(cache, endpoint, clock, **options) -> WikidataAPIClient:
    """A client of `endpoint` whose waits go to `clock`; `options` are settings or client arguments."""
    settings = dict(endpoint=endpoint, user_agent=USER_AGENT, requests_per_second=1000, max_retries=3, timeout_s=5)
    arguments = dict(sleep=clock.sleep, clock=clock.time, rng=random.Random(0))
    for name, value in options.items():
        (settings if name in SETTING_NAMES else arguments)[name] = value
    return WikidataAPIClient(cache, WikidataSettings(**settings), **arguments)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- dumps ------------------------------------------------------------------------------
def item(qid, label=None, description=None, aliases=(), language="en", labels=None, **extra) -> dict:
    """An item in the dump's layout: terms first, then claims and sitelinks (most of a real line)."""
    if labels is None:
        labels = {language: {"language": language, "value": label}} if label else {}
    return {
        "type": "item", "id": qid,
        "labels": labels,
        "descriptions": {language: {"language": language, "value": description}} if description else {},
        "aliases": {language: [{"language": language, "value": a} for a in aliases]} if aliases else {},
        "claims": {"P31": [{"mainsnak": {"snaktype": "value", "property": "P31",
                                         "datavalue": {"value": {"id": "Q5"}, "type": "wikibase-entityid"}}}]},
        "sitelinks": {"enwiki": {"site": "enwiki", "title": label or qid}},
        **extra,
    }


def dump_line(entry) -> str:
    return entry if isinstance(entry, str) else json.dumps(entry, separators=(",", ":"), ensure_ascii=False)


def write_dump(path: Path, entries, *, closing: bool = True) -> Path:
    """The official layout: '[' line, one entity per line ending in ',', ']' line."""
    text = "[\n" + ",\n".join(dump_line(e) for e in entries) + ("\n]\n" if closing else "\n")
    data = text.encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".bz2"):
        data = bz2.compress(data, compresslevel=1)  # 100 kB blocks: a cut file still has whole blocks
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
