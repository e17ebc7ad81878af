"""Ingestion assets: a MIMIC-layout dataset -> mentions, entities, quarantine tables."""

import json

import dagster as dg

from assets.metadata import markdown_table, table_metadata
from assets.resources import DatasetResource, LakeResource, user_errors
from pipeline import catalog
from pipeline.hashing import hash_strings
from pipeline.ingest import (
    INGEST_VERSION,
    DatasetLayout,
    IngestReport,
    IngestSettings,
    ingest_dataset,
)

GROUP = "ingest"


@dg.observable_source_asset(
    group_name=GROUP,
    description="The dataset's files as found on disk: its data version changes when a file is added, removed, "
    "resized or touched, which marks the ingest tables stale (a stale-only run re-ingests them).",
)
def dataset_files(lake: LakeResource, dataset: DatasetResource) -> dg.DataVersion:
    with user_errors():
        root = dataset.locate(lake.lake())
        changes = DatasetLayout.discover(root).change_fingerprints()
    return dg.DataVersion(hash_strings([str(root), changes["mentions"], changes["kb"]]))


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            catalog.MENTIONS, group_name=GROUP, kinds={"parquet"}, code_version=INGEST_VERSION, deps=["dataset_files"],
            description="One row per usable mention: split, text, image, gold QID and KB index (nil kept, flagged).",
        ),
        dg.AssetSpec(
            catalog.ENTITIES, group_name=GROUP, kinds={"parquet"}, code_version=INGEST_VERSION, deps=["dataset_files"],
            description="One row per usable KB entity: index, QID, name, description, usable image paths.",
        ),
        dg.AssetSpec(
            catalog.QUARANTINE, group_name=GROUP, kinds={"parquet"}, code_version=INGEST_VERSION, deps=["dataset_files"],
            description="Every record or image that could not be used, with file, record and reason.",
        ),
    ],
    can_subset=False,
)
def mimic_dataset(context: dg.AssetExecutionContext, lake: LakeResource, dataset: DatasetResource):
    """Validate the dataset and write its tables; reuse them when no input file changed."""
    store = lake.lake()
    with user_errors():
        report = ingest_dataset(store, IngestSettings(dataset.locate(store, context.log)), logger=context.log)
    stats = report.stats
    by_reason = [{"reason": k, "rows": v} for k, v in stats["quarantine_by_reason"].items()]
    yield _result(report, catalog.MENTIONS, ["mention_id", "mention", "sentence", "gold_qid", "image_path"], {
        key: stats[key] for key in ("mentions_train", "mentions_dev", "mentions_test", "nil_train", "nil_dev",
                                    "nil_test", "mentions_without_image")})
    yield _result(report, catalog.ENTITIES, ["kb_index", "qid", "name", "description"],
                  {"entities_without_image": stats["entities_without_image"]})
    yield _result(report, catalog.QUARANTINE, ["file", "record_index", "reason_code", "reason", "action"], {
        "records_dropped": stats["quarantined_records"],
        "by_reason": dg.MetadataValue.md(markdown_table(by_reason))})


def _result(report: IngestReport, name: str, preview_columns: list[str], figures: dict) -> dg.MaterializeResult:
    """One table's materialization. Its data version is its own content: a KB-only change leaves `mentions`
    (and all that depends on it) in sync."""
    table = report.tables[name]
    return dg.MaterializeResult(
        asset_key=name,
        data_version=dg.DataVersion(table.content_hash),
        metadata={
            **table_metadata(table, preview_columns),
            **figures,
            "fingerprint": report.fingerprint,
            "reused_stored_output": report.reused,
            "dataset_dir": dg.MetadataValue.path(report.stats["dataset_dir"]),
        },
    )


@dg.asset_check(asset=catalog.QUARANTINE, description="Warns when more than 5% of the records had to be dropped.")
def quarantine_rate(lake: LakeResource) -> dg.AssetCheckResult:
    stats = lake.lake().table_extra(catalog.QUARANTINE)
    dropped = stats["quarantined_records"]
    total = dropped + stats["mentions"] + stats["entities"]
    rate = dropped / total if total else 0.0
    return dg.AssetCheckResult(
        passed=rate <= 0.05,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"dropped_records": dropped, "drop_rate": rate},
        description=f"{dropped} of {total} records dropped ({rate:.1%}).",
    )


refresh_job = dg.define_asset_job(
    "refresh_dataset",
    selection=dg.AssetSelection.assets(*catalog.INGEST_TABLES).downstream()
    - dg.AssetSelection.groups("linking") - dg.AssetSelection.assets("entity_feature_shards"),
    description="Re-ingest the dataset and bring every downstream asset up to date; "
    "each stage recomputes only what changed (entity_features encodes the changed entities itself: the KB "
    "shards are for embedding a whole KB, see embed_kb_shards).",
)


kb_refresh_job = dg.define_asset_job(
    "refresh_kb",
    selection=dg.AssetSelection.assets(*catalog.INGEST_TABLES, catalog.ENTITY_FEATURES, "entity_index",
                                       "retrieval_index"),
    description="Re-ingest after a KB change (kb_entity.json, qid2id.json, kb_image/ or inbox/kb/ change files) "
    "and update the entity features and both indexes in place (the trained one encodes only the changed "
    "entities); new entities are linkable at once, no retraining.",
)


@dg.sensor(jobs=[refresh_job, kb_refresh_job], minimum_interval_seconds=60,
           default_status=dg.DefaultSensorStatus.RUNNING)
def dataset_change_sensor(context: dg.SensorEvaluationContext, lake: LakeResource, dataset: DatasetResource):
    """Starts `refresh_kb` when only KB files changed, `refresh_dataset` when mention files changed too
    (names, sizes, mtimes)."""
    store = lake.lake()
    root = dataset.configured_dir() or store.demo_dataset_dir
    try:
        layout = DatasetLayout.discover(root)
    except Exception as error:  # the dataset may be mid-copy; say why and look again later
        return dg.SkipReason(f"Dataset not readable yet: {error}")
    now = layout.change_fingerprints()
    try:
        before = json.loads(context.cursor or "{}")
    except json.JSONDecodeError:
        before = {}
    if now == before:
        return dg.SkipReason("No dataset file changed.")
    context.update_cursor(json.dumps(now, sort_keys=True))
    job = kb_refresh_job if before.get("mentions") == now["mentions"] else refresh_job
    return dg.RunRequest(run_key=f"{now['mentions']}:{now['kb']}", job_name=job.name)
