"""Incremental operation on a materialized lake: a new inbox file of 1% of the mentions, and a change of 1% of
the KB, each run the way the UI's daemon runs it (a sensor tick, then a run in its own process).

    make demo && python bench/linking.py --cold-seconds <make demo's Dagster run, s>   # the demo lake
    MEL_HOME=/x/.mel MEL_DATASET_DIR=/data/x python bench/linking.py --cold-seconds ...  # any lake

What runs:
  1. inbox   copies `--share` of the test mentions under new ids and with a new sentence ending (so no cache
             knows them: new prompts, new texts) and their images into `inbox/<name>.json`;
             one `inbox_sensor` tick; the run it requests as `dagster asset materialize --select links
             --partition <name>` (a process of its own, code location load included). Reports the tick, the
             run's wall time against the cold run, what it computed, and that no other asset ran.
  2. kb      edits the description of `--share` of the KB entities in an `inbox/kb/` change file; one
             `dataset_change_sensor` tick (it must ask for `refresh_kb`, not `refresh_dataset`); that job as
             `dagster job execute`; then a file of one mention of each edited entity is linked as in 1.
Figures are read from the asset metadata of the runs; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg  # noqa: E402

from assets import ingest, linking  # noqa: E402
from assets.definitions import defs  # noqa: E402
from pipeline.lake import Lake  # noqa: E402
from pipeline.linking import read_links  # noqa: E402

BIN = Path(sys.executable).parent


def tick(instance, sensor, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=defs.resources)
    started = time.perf_counter()
    result = sensor(context)
    seconds = time.perf_counter() - started
    for request in getattr(result, "dynamic_partitions_requests", None) or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result, seconds


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-4000:]}")
    return time.perf_counter() - started


def latest_metadata(instance, key: str, partition: str | None = None) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    if partition is not None:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition]), limit=1).records
        event = records[0].event_log_entry
    values = {name: value.value for name, value in event.asset_materialization.metadata.items()}
    return {name: value for name, value in values.items()  # figures only: no previews, schemas or plots
            if isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) < 120)}


def drop(dataset: Path, name: str, records: list) -> Path:
    inbox = dataset / "inbox"
    (inbox / "mention_image").mkdir(parents=True, exist_ok=True)
    for record in records:
        if record.get("imgPath") and (dataset / "mention_image" / record["imgPath"]).is_file():
            shutil.copy(dataset / "mention_image" / record["imgPath"], inbox / "mention_image" / record["imgPath"])
    path = inbox / name
    path.write_text(json.dumps(records))
    old = time.time() - 3600
    os.utime(path, (old, old))
    return path


def link_file(instance, dataset: Path, name: str, records: list) -> dict:
    drop(dataset, name, records)
    result, tick_seconds = tick(instance, linking.inbox_sensor)
    keys = [request.partition_key for request in result.run_requests]
    assert keys == [name], f"the sensor asked for {keys}, expected [{name!r}]"
    run_seconds = timed([str(BIN / "dagster"), "asset", "materialize", "-m", "assets.definitions",
                         "--select", "links", "--partition", name])
    shown = latest_metadata(instance, "links", name)
    return {"tick_seconds": tick_seconds, "run_seconds": run_seconds, **shown}


def inbox_step(instance, lake: Lake, dataset: Path, share: float, cold: float | None) -> dict:
    mentions = lake.read_table("mentions", columns=["split"]).num_rows
    test = json.loads(next(dataset.glob("*_test.json")).read_text())
    count = max(1, math.ceil(share * mentions))
    stamp = time.strftime("%Y%m%dT%H%M%S")
    # New mentions: the test records' ids and sentences changed, so every prompt and text is new to the caches.
    records = [{**record, "id": f"bench-{stamp}-{record['id']}", "sentence": f"{record['sentence']} (new report)"}
               for record in test[:count]]
    before = {key: instance.get_latest_materialization_event(dg.AssetKey(key)) for key in
              ("mention_descriptions", "mention_features", "mmoe_model", "evaluation")}
    figures = link_file(instance, dataset, f"bench-{stamp}.json", records)
    others_ran = [key for key, event in before.items()
                  if instance.get_latest_materialization_event(dg.AssetKey(key)) != event]
    rows = [r for r in read_links(lake).to_pylist() if r["partition"] == f"bench-{stamp}.json"]
    return {"mentions_in_lake": mentions, "file_mentions": count, "rows": len(rows), "others_ran": others_ran,
            "share_of_cold": figures["run_seconds"] / cold if cold else None, **figures}


def kb_step(instance, lake: Lake, dataset: Path, share: float) -> dict:
    entities = lake.read_table("entities", columns=["kb_index", "qid", "name", "description", "image_paths"])
    count = max(1, math.ceil(share * entities.num_rows))
    stamp = time.strftime("%Y%m%dT%H%M%S")
    picked = entities.slice(0, count).to_pylist()
    changes = [{"op": "upsert", "qid": row["qid"], "entity_name": row["name"],
                "desc": f"{row['description'] or ''} (revised {stamp})",
                "image_list": [Path(p).name for p in row["image_paths"]]} for row in picked]
    (dataset / "inbox" / "kb").mkdir(parents=True, exist_ok=True)
    (dataset / "inbox" / "kb" / f"bench-{stamp}.json").write_text(json.dumps(changes))
    request, tick_seconds = tick(instance, ingest.dataset_change_sensor, json.dumps(_sensor_cursor(dataset)))
    assert isinstance(request, dg.RunRequest), request
    refresh_seconds = timed([str(BIN / "dagster"), "job", "execute", "-m", "assets.definitions",
                             "-j", request.job_name])
    features = latest_metadata(instance, "entity_features")
    index = latest_metadata(instance, "entity_index")
    test = json.loads(next(dataset.glob("*_test.json")).read_text())
    qids = {row["qid"] for row in picked}
    records = [{**r, "id": f"kb-{stamp}-{r['id']}"} for r in test if r.get("answer") in qids][:count] or \
        [{**test[0], "id": f"kb-{stamp}-0"}]
    linked = link_file(instance, dataset, f"kb-{stamp}.json", records)
    return {"entities": entities.num_rows, "changed": count, "job": request.job_name,
            "sensor_tick_seconds": tick_seconds, "refresh_seconds": refresh_seconds,
            "items_encoded": features["items_encoded"], "index_action": index["action"],
            "index_updated": index["updated"], "index_added": index["added"],
            "link_run_seconds": linked["run_seconds"], "link_accuracy": linked.get("accuracy")}


def _sensor_cursor(dataset: Path) -> dict:
    """The cursor a running dataset_change_sensor holds before the KB change: the current mention files and the
    KB files as they were (so the tick sees exactly this change)."""
    from pipeline.ingest import DatasetLayout

    return {**DatasetLayout.discover(dataset).change_fingerprints(), "kb": "before the change"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--share", type=float, default=0.01, help="share of the mentions / of the KB (0.01)")
    parser.add_argument("--cold-seconds", type=float, default=None, help="the cold run's time, for the ratio")
    parser.add_argument("--steps", nargs="+", default=["inbox", "kb"], choices=["inbox", "kb"])
    args = parser.parse_args()
    lake = Lake()
    dataset = Path(os.environ.get("MEL_DATASET_DIR") or lake.demo_dataset_dir)
    os.environ.setdefault("DAGSTER_HOME", str(lake.dagster_home))
    with dg.DagsterInstance.get() as instance:
        report = {}
        if "inbox" in args.steps:
            report["inbox"] = inbox_step(instance, lake, dataset, args.share, args.cold_seconds)
        if "kb" in args.steps:
            report["kb"] = kb_step(instance, lake, dataset, args.share)
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
