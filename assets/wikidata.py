"""WikiData candidates per mention (the first step of MMoE's description enrichment).

The logic lives in `pipeline.wikidata`; this module maps resource settings onto it and
turns its statistics into metadata (numbers as numbers, so the UI plots them across
materializations: cache hits, HTTP requests and failures show whether a run was warm).
"""

import dagster as dg
from pydantic import Field

from assets.metadata import markdown_table, preview, table_metadata
from assets.resources import DatasetResource, LakeResource, user_errors
from pipeline.wikidata.api import DEFAULT_ENDPOINT, default_user_agent
from pipeline.wikidata.stage import CANDIDATES_VERSION, WikidataSettings, build_wikidata_candidates

GROUP = "enhance"
COUNTS = (
    "mentions", "mentions_with_candidates", "mentions_without_candidates", "mentions_no_match",
    "mentions_failed_lookup", "mentions_empty_search", "mean_candidates_per_mention", "distinct_searches",
    "cache_hits", "looked_up", "retried_failures", "http_requests", "failures", "seconds",
)
DUMP_COUNTS = ("dump_lines_read", "index_items", "index_terms", "dump_truncated_after_lines")


class WikidataResource(dg.ConfigurableResource):
    """Where WikiData candidates come from: a local JSON dump or the WikiData API."""

    source: str = Field(
        default="auto",
        description="'dump', 'api', or 'auto': the dump when `dump_path` (or $MEL_WIKIDATA_DUMP) is set or the "
        "dataset carries one in wikidata/*.json[.gz|.bz2], else the API.",
    )
    dump_path: str = Field(default="", description="A WikiData JSON dump (.json, .json.gz or .json.bz2).")
    endpoint: str = Field(default=DEFAULT_ENDPOINT, description="The MediaWiki API endpoint of WikiData.")
    user_agent: str = Field(
        default_factory=default_user_agent,
        description="Sent with every request; Wikimedia asks for a project name and a contact address.",
    )
    requests_per_second: float = Field(default=5.0, description="Global rate limit of API requests.")
    max_retries: int = Field(default=5, description="Retries of one request after 429, 5xx, timeouts, bad bodies.")
    timeout_s: float = Field(default=30.0, description="Connect and read timeout of one request, in seconds.")
    language: str = Field(default="en", description="Language of labels, aliases and descriptions.")
    max_candidates: int = Field(default=10, description="Candidates kept per mention (at most 50 for the API).")

    def settings(self) -> WikidataSettings:
        return WikidataSettings(
            source=self.source, dump_path=self.dump_path, endpoint=self.endpoint, user_agent=self.user_agent,
            requests_per_second=self.requests_per_second, max_retries=self.max_retries,
            timeout_s=self.timeout_s, language=self.language, max_candidates=self.max_candidates,
        )


@dg.asset(
    deps=["mentions"],
    code_version=CANDIDATES_VERSION,
    group_name=GROUP,
    kinds={"duckdb", "parquet"},
    description="Up to N WikiData items per mention (QID, label, description, rank, match, source), from a "
    "dump index or the API, every lookup cached; failed lookups go to `wikidata_failures` and are retried "
    "on the next run.",
)
def wikidata_candidates(
    context: dg.AssetExecutionContext, lake: LakeResource, dataset: DatasetResource, wikidata: WikidataResource
) -> dg.MaterializeResult:
    store = lake.lake()
    with user_errors():
        report = build_wikidata_candidates(
            store, wikidata.settings(), lambda: dataset.locate(store, context.log), logger=context.log)
    stats = report.stats
    candidates = store.read_table("wikidata_candidates")
    failures = store.read_table("wikidata_failures")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(report.content_hash),
        metadata={
            **table_metadata(candidates, store.table_path("wikidata_candidates"),
                             ["mention_id", "rank", "qid", "label", "description", "match"]),
            **{key: stats[key] for key in COUNTS if key in stats},
            "cache_hit_rate": float(stats["cache_hit_rate"]),
            **{key: stats[key] for key in DUMP_COUNTS if stats.get(key) is not None},
            "source": stats["source"],
            "source_location": stats.get("dump_path") or stats.get("endpoint", ""),
            "failures_by_reason": dg.MetadataValue.md(markdown_table(
                [{"reason": reason, "search strings": n} for reason, n in stats["failures_by_reason"].items()])),
            "failures_preview": preview(failures, columns=["search", "reason", "attempts", "last_status"]),
            "dump_skipped_by_reason": dg.MetadataValue.json(stats.get("dump_skipped_by_reason", {})),
            "reused_stored_output": report.reused,
            "fingerprint": report.fingerprint,
        },
    )


@dg.asset_check(
    asset="wikidata_candidates",
    description="Warns when WikiData lookups failed; the next materialization retries exactly those.",
)
def wikidata_lookup_failures(lake: LakeResource) -> dg.AssetCheckResult:
    failures = lake.lake().read_table("wikidata_failures")
    reasons = sorted(set(failures["reason"].to_pylist()))
    return dg.AssetCheckResult(
        passed=failures.num_rows == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"failed_lookups": failures.num_rows, "reasons": ", ".join(reasons) or "none"},
        description=f"{failures.num_rows} failed WikiData lookups" + (f" ({', '.join(reasons)})." if reasons else "."),
    )
