"""Linking new mentions: the `links` asset, one dynamic partition per inbox file, and the sensors that feed it.

- `inbox_sensor` registers each complete new file of `<dataset>/inbox/` as a partition and requests a run of
  that partition alone; a file whose content was linked before (under any name) is not linked again.
- `relink_sensor` requests a run for each linked partition made with an older model or entity index (after a
  KB change or a re-embedding); inside the run only mentions whose candidates changed are reranked.

The logic lives in `pipeline.linking`; this module maps the resources onto its settings.
"""

import json

import dagster as dg
from pydantic import Field

from assets.descriptions import LLMResource
from assets.features import ClipResource
from assets.index import IndexResource
from assets.metadata import markdown_table, table_metadata
from assets.resources import DatasetResource, LakeResource, user_errors
from assets.training import TrainingResource
from assets.wikidata import WikidataResource
from pipeline.errors import MELUserError
from pipeline.hashing import hash_file
from pipeline.linking import (LinkSettings, link_inbox_file, linked_file_hashes, linking_state, list_inbox,
                              out_of_date_partitions)
from pipeline.linking.link import LINK_VERSION

GROUP = "linking"
PARTITIONS = dg.DynamicPartitionsDefinition(name="inbox_files")


class InboxResource(dg.ConfigurableResource):
    """When an inbox file counts as complete."""

    settle_seconds: float = Field(default=10.0, description="A file is read once it has not changed for this "
                                  "long (a copy in progress keeps changing it).")


@dg.asset(
    partitions_def=PARTITIONS,
    deps=["entities", "retrieval_index", "mmoe_model"],
    group_name=GROUP,
    kinds={"pytorch", "parquet"},
    code_version=LINK_VERSION,
    pool="gpu",
    description="The mentions of one inbox file linked by the trained model, without retraining: per record its "
    "top-10 KB entities (QID, name, total and per-unit scores), the experts it was routed to, the gold rank when "
    "its answer is a KB QID, and the model, encoder and index that made it. `tables/links/<file>.parquet`.",
)
def links(context: dg.AssetExecutionContext, lake: LakeResource, dataset: DatasetResource,
          wikidata: WikidataResource, llm: LLMResource, clip: ClipResource, index: IndexResource,
          training: TrainingResource) -> dg.MaterializeResult:
    store = lake.lake()
    with user_errors():
        settings = LinkSettings(wikidata=wikidata.settings(), llm=llm.settings(), encoder=clip.settings(),
                                index=index.settings(), training=training.settings())
        report = link_inbox_file(store, settings, dataset.locate(store, context.log), context.partition_key,
                                 logger=context.log)
    stats, overall = report.stats, report.running
    metadata = {
        **table_metadata(report.table, ["record_id", "status", "mention", "gold_qid", "gold_rank", "correct",
                                        "problem"]),
        "top_links": dg.MetadataValue.md(markdown_table(_top_links(report.table.head))),
        **{f"mentions_{status}": count for status, count in stats.get("statuses", {}).items()},
        "records": stats.get("records", 0),
        "accuracy": _number(stats.get("accuracy")),
        "labelled_mentions": stats.get("labelled", 0),
        "running_accuracy": _number(overall["accuracy"]),
        "running_labelled_mentions": overall["labelled"],
        "linked_partitions": overall["partitions"],
        "reused_stored_output": report.reused,
        "seconds": float(stats.get("seconds", 0.0)),
        "mentions_per_second": float(stats.get("mentions", 0) / max(stats.get("seconds", 0.0), 1e-9))
        if not report.reused else 0.0,
        "fingerprint": report.fingerprint,
    }
    for stage in ("wikidata", "descriptions", "features", "candidates", "rerank"):
        for name, value in stats.get(stage, {}).items():
            metadata[f"{stage}/{name}"] = value
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(report.fingerprint))


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def _top_links(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        best = row["top_entities"][0] if row["top_entities"] else None
        out.append({"record": row["record_id"], "mention": row["mention"], "status": row["status"],
                    "top entity": f"{best['qid']} {best['name']}" if best else "",
                    "score": f"{best['score']:.3f}" if best else "", "gold": row["gold_qid"] or ""})
    return out


link_job = dg.define_asset_job(
    "link_inbox", selection=dg.AssetSelection.assets(links),
    description="Link one inbox file (a partition of `links`) with the current model; no retraining.")


@dg.sensor(job=link_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def inbox_sensor(context: dg.SensorEvaluationContext, lake: LakeResource, dataset: DatasetResource,
                 inbox: InboxResource):
    """New complete inbox files become partitions, each linked by a run of its own."""
    store = lake.lake()
    listing = list_inbox(dataset.configured_dir() or store.demo_dataset_dir)
    cursor = json.loads(context.cursor) if context.cursor else {"seen": {}, "hashes": {}}
    linked = linked_file_hashes(store)  # content hash -> partition, for files whose links are in the lake
    known = set(context.instance.get_dynamic_partitions(PARTITIONS.name))
    new_keys, requests, notes = [], [], []
    for item in listing.files:
        seen = cursor["seen"].get(item.key)
        if seen and seen[:2] == [item.size, item.mtime_ns]:
            continue
        if not item.settled(inbox.settle_seconds):
            notes.append(f"{item.key} is still being written; read once unchanged for {inbox.settle_seconds:g} s.")
            continue
        digest = hash_file(item.path)
        cursor["seen"][item.key] = [item.size, item.mtime_ns, digest]
        owner = linked.get(digest) or cursor["hashes"].get(digest)
        if owner is not None and owner != item.key:
            notes.append(f"{item.key} has the same content as {owner}: not linked again.")
            continue
        cursor["hashes"][digest] = item.key
        if item.key not in known:
            new_keys.append(item.key)
        if linked.get(digest) == item.key:
            continue  # touched, or linked before this sensor's cursor began: its links stand
        # The mtime in the run key lets a touched file retry a run that failed (e.g. before a model existed).
        requests.append(dg.RunRequest(partition_key=item.key, run_key=f"{item.key}:{digest}:{item.mtime_ns}"))
    notes += [f"{name} is ignored: {why}." for name, why in listing.ignored.items()]
    for note in notes:
        context.log.info(note)
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[PARTITIONS.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps(cursor, sort_keys=True),
        skip_reason=None if requests else dg.SkipReason(" ".join(notes) or "No new inbox file."),
    )


@dg.sensor(job=link_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def relink_sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
    """Partitions linked with an older model or entity index are linked again (only changed mentions rerank)."""
    try:
        current = linking_state(lake.lake())
        stale = out_of_date_partitions(lake.lake())
    except MELUserError as error:
        return dg.SkipReason(str(error))
    known = set(context.instance.get_dynamic_partitions(PARTITIONS.name))
    requests = [dg.RunRequest(partition_key=key, run_key=f"relink:{key}:{current['model']}:{current['index']}")
                for key in stale if key in known]
    return requests or dg.SkipReason("Every linked partition is up to date with the current model and index.")
