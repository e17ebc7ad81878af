"""WikiData candidates per mention (the first step of MMoE's description enrichment).

The logic and the settings live in `pipeline.wikidata`; this module generates the resource from the
settings and turns the stage's report into metadata (numbers as numbers, so the UI plots them across
materializations: cache hits, HTTP requests and failures show whether a run was warm).
"""

import dagster as dg

from assets.metadata import markdown_table, preview, table_metadata
from assets.resources import (
    DatasetResource,
    LakeResource,
    settings_resource,
    user_errors,
)
from pipeline import catalog
from pipeline.wikidata.settings import WikidataSettings
from pipeline.wikidata.stage import CANDIDATES_VERSION, build_wikidata_candidates

GROUP = "enhance"
COUNTS = (
    "mentions", "mentions_with_candidates", "mentions_without_candidates", "mentions_no_match",
    "mentions_failed_lookup", "mentions_empty_search", "mean_candidates_per_mention", "distinct_searches",
    "cache_hits", "looked_up", "retried_failures", "http_requests", "failures", "seconds",
)
DUMP_COUNTS = ("dump_lines_read", "index_items", "index_terms", "dump_truncated_after_lines")


class WikidataResource(settings_resource(WikidataSettings)):
    """Where WikiData candidates come from: a local JSON dump or the WikiData API."""


@dg.asset(
    deps=[catalog.MENTIONS],
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
        report = build_wikidata_candidates(store, wikidata.settings(), logger=context.log,
                                           find_dataset_dir=lambda: dataset.locate(store, context.log))
    stats = report.stats
    candidates = report.tables[catalog.WIKIDATA_CANDIDATES]
    failures = report.tables[catalog.WIKIDATA_FAILURES]
    return dg.MaterializeResult(
        data_version=dg.DataVersion(candidates.content_hash),
        metadata={
            **table_metadata(candidates, ["mention_id", "rank", "qid", "label", "description", "match"]),
            **{key: stats[key] for key in COUNTS if key in stats},
            "cache_hit_rate": float(stats["cache_hit_rate"]),
            **{key: stats[key] for key in DUMP_COUNTS if stats.get(key) is not None},
            "source": stats["source"],
            "source_location": stats.get("dump_path") or stats.get("endpoint", ""),
            "failures_by_reason": dg.MetadataValue.md(markdown_table(
                [{"reason": reason, "search strings": n} for reason, n in stats["failures_by_reason"].items()])),
            "failures_preview": preview(failures.head, ["search", "reason", "attempts", "last_status"]),
            "dump_skipped_by_reason": dg.MetadataValue.json(stats.get("dump_skipped_by_reason", {})),
            "reused_stored_output": report.reused,
            "fingerprint": report.fingerprint,
        },
    )


@dg.asset_check(
    asset=catalog.WIKIDATA_CANDIDATES,
    description="Warns when WikiData lookups failed; the next materialization retries exactly those.",
)
def wikidata_lookup_failures(lake: LakeResource) -> dg.AssetCheckResult:
    failures = lake.lake().read_table(catalog.WIKIDATA_FAILURES)
    reasons = sorted(set(failures["reason"].to_pylist()))
    return dg.AssetCheckResult(
        passed=failures.num_rows == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"failed_lookups": failures.num_rows, "reasons": ", ".join(reasons) or "none"},
        description=f"{failures.num_rows} failed WikiData lookups" + (f" ({', '.join(reasons)})." if reasons else "."),
    )
