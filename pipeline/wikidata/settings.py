"""Where WikiData candidates come from and how they are asked for: `WikidataSettings`, checked on creation.

The `WikidataResource` is generated from this dataclass (`assets.resources.settings_resource`).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from dataclasses import dataclass
from urllib.parse import urlparse

import requests

from pipeline.settings import refuse, setting

DEFAULT_ENDPOINT = "https://www.wikidata.org/w/api.php"
SOURCES = ("auto", "dump", "api")
DUMP_ENV = "MEL_WIKIDATA_DUMP"
LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]+)*$")


def default_user_agent() -> str:
    try:
        version = importlib.metadata.version("mmoe-mel")
    except importlib.metadata.PackageNotFoundError:
        version = "0.1"
    return (f"mmoe-mel/{version} (https://github.com/mmoe-mel/mmoe-mel; mel@example.org) "
            f"python-requests/{requests.__version__}")


@dataclass(frozen=True)
class WikidataSettings:
    """Which source answers the searches, how the API is asked, and what is kept of the answers."""

    source: str = setting(
        "auto", "'dump', 'api', or 'auto': the dump when `dump_path` (or $MEL_WIKIDATA_DUMP) is set or the "
        "dataset carries one in wikidata/*.json[.gz|.bz2], else the API.")
    dump_path: str = setting("", "A WikiData JSON dump (.json, .json.gz or .json.bz2).")
    endpoint: str = setting(DEFAULT_ENDPOINT, "The MediaWiki API endpoint of WikiData.")
    user_agent: str = setting(
        doc="Sent with every request; Wikimedia asks for a project name and a contact address.",
        default_factory=default_user_agent)
    requests_per_second: float = setting(5.0, "Global rate limit of API requests.")
    max_retries: int = setting(5, "Retries of one request after 429, 5xx, timeouts, bad bodies.")
    timeout_s: float = setting(30.0, "Connect and read timeout of one request, in seconds.")
    language: str = setting("en", "Language of labels, aliases and descriptions.")
    max_candidates: int = setting(10, "Candidates kept per mention (at most 50 for the API).")

    def __post_init__(self):
        if self.source not in SOURCES:
            refuse(self, f"source {self.source!r} is not one of {', '.join(SOURCES)}.")
        url = urlparse(self.endpoint)
        if url.scheme not in ("http", "https") or not url.netloc:
            refuse(self, f"endpoint {self.endpoint!r} is not an http(s) URL.")
        if not self.requests_per_second > 0:
            refuse(self, f"requests_per_second must be above 0 (got {self.requests_per_second}).")
        if self.max_retries < 0:
            refuse(self, f"max_retries must be 0 or more (got {self.max_retries}).")
        if not self.timeout_s > 0:
            refuse(self, f"timeout_s must be above 0 (got {self.timeout_s}).")
        check_language(self.language)
        if self.max_candidates < 1:
            refuse(self, f"max_candidates must be 1 or more (got {self.max_candidates}).")

    def configured_dump(self) -> str:
        """The dump named by `dump_path`, else by $MEL_WIKIDATA_DUMP; empty when neither names one."""
        return self.dump_path or os.environ.get(DUMP_ENV, "")


def check_language(language: str) -> None:
    """The language goes into index file names and API requests: only a WikiData language code will do."""
    if not LANGUAGE_CODE.match(language):
        refuse(WikidataSettings, f"language {language!r} is not a WikiData language code such as 'en'.")
