"""Feature assets: CLIP features of every KB entity and every mention, in content-addressed Parquet stores.

The logic lives in ``pipeline.features``; each asset calls its stage (``pipeline.features.stage``) and turns the
report into metadata. A re-materialization encodes only items whose text, image or encoder changed.
``entity_feature_shards`` (one partition per KB shard, ``pipeline.features.shards``) is how embedding a whole KB
fans out over processes or machines; ``entity_features`` links what the shards hold and encodes the rest.
open_clip is imported inside the functions that run the encoder: its import takes seconds, and the code
location imports every asset module each time it loads.
"""


import json
import os

import dagster as dg
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

from assets.metadata import markdown_table
from assets.resources import LakeResource, settings_resource, user_errors
from pipeline import catalog
from pipeline.errors import MELUserError
from pipeline.features import EncoderSpec, FeatureStore
from pipeline.features.shards import SHARD_COUNT_ENV, KBShards
from pipeline.features.validate import check_feature_store

GROUP = "features"
# Read once, when the code location loads: the same count must reach every process of a deployment (the UI,
# the daemon and each run worker), so set $MEL_KB_SHARDS where they all start. A new count gives new shard
# stores; entity_features reuses what the old ones hold only for the count it was loaded with.
KB_SHARDS = KBShards.from_env()
kb_shards = dg.StaticPartitionsDefinition(KB_SHARDS.keys)


class ClipResource(settings_resource(EncoderSpec)):
    """The open_clip encoder and how to run it.

    The default is an UNTRAINED random-init ``mel-tiny-clip`` (offline, fast on a CPU, for tests and the
    demo). For real use set e.g. ``arch="ViT-B-32", pretrained="openai"`` or ``checkpoint=<file>``.
    """


class ExtractConfig(dg.Config):
    force: bool = False  # re-encode every item even when the store holds its features


def _materialized(report, clip: ClipResource, extra_metadata=None) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={**_metadata(report, clip), **(extra_metadata or {})},
                                data_version=dg.DataVersion(report.fingerprint))


def _metadata(report, clip: ClipResource) -> dict:
    store = report.store
    disk = store.disk_bytes()
    issues = store.issues
    by_code = [{"code": code, "items": count} for code, count in report.issues_by_code.items()]
    metadata = {
        "dagster/row_count": report.items,
        "items_encoded": report.encoded,
        "items_reused": report.reused,
        "items_per_second": float(round(report.items_per_second, 2)),
        "encode_seconds": float(round(report.encode_seconds, 2)),
        "input_wait_share": float(round(report.input_wait_seconds / report.encode_seconds, 3))
        if report.encode_seconds else 0.0,
        "items_without_image": int((~store.has_image).sum()),
        "issues": issues.num_rows,
        "issues_by_code": dg.MetadataValue.md(markdown_table(by_code)),
        "issues_preview": dg.MetadataValue.md(markdown_table(issues.slice(0, 10).to_pylist())),
        "encoder": dg.MetadataValue.json(report.encoder),
        "dims": dg.MetadataValue.json(report.dims),
        "recipe": dg.MetadataValue.json(store.recipe),
        "store_path": dg.MetadataValue.path(str(store.root)),
        "size_on_disk_bytes": disk["total"],
        "parquet_bytes": disk["parquet_parts"],
        "mirror_bytes": disk["mirror"],
        "fingerprint": report.fingerprint,
        "store_rewritten": report.committed,
        "parts_linked": report.parts_linked,
    }
    if clip.settings().untrained:
        metadata["WARNING"] = (
            f"UNTRAINED random-init encoder ({clip.arch}, seed={clip.seed}): these features carry no learned "
            "meaning. Set ClipResource.pretrained (e.g. 'openai' with arch 'ViT-B-32') or checkpoint for real use."
        )
    return metadata


@dg.asset(
    group_name=GROUP, deps=["entities"], partitions_def=kb_shards, pool="gpu", kinds={"parquet", "pytorch"},
    description=f"CLIP features of one KB shard (the entities whose kb_index % {KB_SHARDS.count} is the partition; "
    f"${SHARD_COUNT_ENV} sets the count), in a store of its own: backfill the partitions to embed a large KB "
    "over several processes or machines; entity_features then links them into one store without encoding.",
)
def entity_feature_shards(context: dg.AssetExecutionContext, config: ExtractConfig, lake: LakeResource,
                          clip: ClipResource) -> dg.MaterializeResult:
    from pipeline.features import embed_kb_shard  # open_clip loads on first use, not with the code location

    with user_errors():
        shard = KB_SHARDS.shard(context.partition_key)
        report = embed_kb_shard(lake.lake(), clip.settings(), KB_SHARDS, shard, force=config.force,
                                logger=context.log)
        return _materialized(report, clip, {"shard": shard, "shards": KB_SHARDS.count})


@dg.asset(
    group_name=GROUP, deps=["entities", "entity_feature_shards"], pool="gpu", kinds={"parquet", "pytorch"},
    description="CLIP features of every KB entity ('name [SEP] description' + first usable image): pooled "
    "vectors and token states, float16, in a content-addressed Parquet store. Entities that an "
    "entity_feature_shards partition holds are linked from it; the rest (all of them when no shard ran, or "
    "the entities changed since) are encoded here: only changed entities re-encode.",
)
def entity_features(context: dg.AssetExecutionContext, config: ExtractConfig, lake: LakeResource,
                    clip: ClipResource) -> dg.MaterializeResult:
    from pipeline.features import embed_entities  # open_clip loads on first use

    with user_errors():
        report = embed_entities(lake.lake(), clip.settings(), KB_SHARDS, force=config.force, logger=context.log)
        return _materialized(report, clip)


@dg.asset(
    group_name=GROUP, deps=["mentions", "mention_descriptions"], pool="gpu", kinds={"parquet", "pytorch"},
    description="CLIP features of every mention ('mention [SEP] sentence [SEP] description' + its image); the "
    "description source is LakeResource.description_source (a non-default source gets its own store).",
)
def mention_features(context: dg.AssetExecutionContext, config: ExtractConfig, lake: LakeResource,
                     clip: ClipResource) -> dg.MaterializeResult:
    from pipeline.features import embed_mentions  # open_clip loads on first use

    with user_errors():
        report = embed_mentions(lake.lake(), clip.settings(), force=config.force, logger=context.log)
        return _materialized(report, clip)


def _store_covers(lake: LakeResource, store_dir, table: str, id_column: str) -> dg.AssetCheckResult:
    try:
        store = FeatureStore.open(store_dir)
    except MELUserError as error:
        return dg.AssetCheckResult(passed=False, description=str(error))
    ids = lake.lake().read_table(table, columns=[id_column]).column(id_column).to_pylist()
    expected = {str(value) for value in ids}
    stored = set(store.ids.tolist())
    missing, extra = sorted(expected - stored), sorted(stored - expected)
    return dg.AssetCheckResult(
        passed=not missing and not extra,
        metadata={"missing_ids": len(missing), "extra_ids": len(extra),
                  "examples": json.dumps({"missing": missing[:5], "extra": extra[:5]})},
        description=f"{len(stored)} stored items; {len(missing)} missing, {len(extra)} not in the {table} table.",
    )


@dg.asset_check(asset=entity_features, description="The store holds exactly one row per entity of the entities table.")
def entity_features_cover_entities(lake: LakeResource) -> dg.AssetCheckResult:
    return _store_covers(lake, catalog.entity_store_dir(lake.lake()), catalog.ENTITIES, "kb_index")


@dg.asset_check(asset=mention_features, description="The store holds exactly one row per mention of the mentions table.")
def mention_features_cover_mentions(lake: LakeResource) -> dg.AssetCheckResult:
    return _store_covers(lake, catalog.mention_store_dir(lake.lake()), catalog.MENTIONS, "mention_id")


def _finite_and_shaped(store_dir) -> dg.AssetCheckResult:
    try:
        store = FeatureStore.open(store_dir)
    except MELUserError as error:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, description=str(error))
    check = check_feature_store(store)
    return dg.AssetCheckResult(
        passed=check.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=check.summary(),
        metadata={
            "store_path": dg.MetadataValue.path(check.root),
            "rows_checked": check.rows,
            "dims": dg.MetadataValue.json(check.dims),
            "shape_problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in check.shape_problems) or "none"),
            "values_checked": check.finite_checked,
            "non_finite_rows": dg.MetadataValue.json(check.non_finite_rows),
            "examples": dg.MetadataValue.md(markdown_table(check.examples)),
        },
    )


FINITE_AND_SHAPED = ("Every row's pooled vectors and token states (image ones where the item has an image) are "
                     "finite, and every stored shape is the one the store's dims declare.")


# Blocking: NaN features would flow silently into the index (which would drop those entities) and training.
@dg.asset_check(asset=entity_features, blocking=True, description=FINITE_AND_SHAPED)
def entity_features_finite_and_shaped(lake: LakeResource) -> dg.AssetCheckResult:
    return _finite_and_shaped(catalog.entity_store_dir(lake.lake()))


@dg.asset_check(asset=mention_features, blocking=True, description=FINITE_AND_SHAPED)
def mention_features_finite_and_shaped(lake: LakeResource) -> dg.AssetCheckResult:
    return _finite_and_shaped(catalog.mention_store_dir(lake.lake()))


embed_kb_shards_job = dg.define_asset_job(
    "embed_kb_shards",
    selection=[entity_feature_shards],
    partitions_def=kb_shards,
    description="Embed the KB shard by shard: backfill it (UI: Launch backfill; CLI: dagster job backfill -j "
    "embed_kb_shards --partitions 0,1,2,3) and each shard runs alone, where the run launcher puts it (a local "
    "process, or a Ray job with RayRunLauncher); a failed shard is re-run alone. kb_shards_sensor then runs "
    "entity_features and what follows.",
)

kb_features_job = dg.define_asset_job(
    "refresh_kb_features",
    selection=dg.AssetSelection.assets(entity_features, mention_features).downstream()
    - dg.AssetSelection.groups("linking"),
    description="Re-embed the KB (and the mentions, when the encoder changed), sync the index in place, retrain "
    "only if what training reads changed, and re-evaluate; only items whose text, image or encoder changed are "
    "encoded (launch with `ops: {entity_features: {config: {force: true}}}` to re-encode everything). "
    "relink_sensor then re-links the inbox partitions the new embeddings change.",
)

@dg.sensor(job=kb_features_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def kb_shards_sensor(context: dg.SensorEvaluationContext):
    """When a backfill of the KB shards is done (every shard materialized, one since entity_features last was,
    no shard run queued or running), start refresh_kb_features: entity_features links the shards, then the
    index, training (when what it reads changed) and evaluation follow."""
    instance = context.instance
    busy = instance.get_runs(dg.RunsFilter(job_name=embed_kb_shards_job.name, statuses=NOT_FINISHED_STATUSES))
    if busy:
        return dg.SkipReason(f"{len(busy)} KB shard run(s) still queued or running.")
    newest = 0.0
    for key in KB_SHARDS.keys:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=entity_feature_shards.key, asset_partitions=[key]), limit=1).records
        if not records:
            return dg.SkipReason(f"KB shard {key} of {KB_SHARDS.count} has not been materialized yet.")
        newest = max(newest, records[0].timestamp)
    assembled = instance.get_latest_materialization_event(entity_features.key)
    if assembled is not None and assembled.timestamp >= newest:
        return dg.SkipReason("entity_features is newer than every KB shard.")
    return dg.RunRequest(run_key=f"kb-shards:{newest}")


REEMBED_CRON_ENV = "MEL_KB_REEMBED_CRON"

weekly_kb_features = dg.ScheduleDefinition(
    name="weekly_kb_features",
    job=kb_features_job,
    cron_schedule=os.environ.get(REEMBED_CRON_ENV, "0 3 * * 0"),
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description=f"Re-embed the KB on a schedule (default Sundays 03:00; set ${REEMBED_CRON_ENV}) so a replaced "
    "encoder checkpoint or edited KB entries reach the index and the links without a manual run (incremental: "
    "unchanged entities cost nothing). Stopped by default: start it in the UI.",
)
