"""Linking new mentions, run the way a user runs it: files dropped in the inbox, the sensor's tick, the runs it
requests, the `links` table. One trained world per module (a generated dataset of other names and sizes than
the demo, the whole graph materialized once, the real SmolLM2 choosing descriptions); each test drops its own
files. The KB change test comes last: it changes the KB the others link against.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from assets import features, index, linking, training
from assets.definitions import defs
from assets.resources import DatasetResource, LakeResource
from pipeline.lake import Lake
from pipeline.linking import read_links
from synthetic.demo import generate_demo_dataset
from tests.conftest import metadata_of

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SMALL_TRAINING = dict(hidden_dim=16, epochs=3, batch_size=16, lr=3e-3, device="cpu")


class World:
    def __init__(self, root: Path):
        self.root = root
        self.dataset = root / "dataset"
        self.lake = Lake(root / "lake")
        self.resources = {
            **defs.resources,
            "lake": LakeResource(root=str(self.lake.root)),
            "dataset": DatasetResource(dataset_dir=str(self.dataset)),
            "training": training.TrainingResource(**SMALL_TRAINING),
            "clip": features.ClipResource(num_workers=0),
            "index": index.IndexResource(candidates_per_mention=30),
            "inbox": linking.InboxResource(settle_seconds=5),
        }
        self.defs = dg.Definitions(assets=list(defs.assets), asset_checks=list(defs.asset_checks),
                                   jobs=list(defs.jobs), sensors=list(defs.sensors), resources=self.resources)
        self.test_records = self.records("test")
        self.dev_records = self.records("dev")

    def records(self, split: str) -> list:
        return json.loads(next(self.dataset.glob(f"*_{split}.json")).read_text())

    def drop(self, name: str, records: list, settled: bool = True) -> Path:
        """Write an inbox file (and the images its records name) as a user's copy would."""
        inbox = self.dataset / "inbox"
        (inbox / "mention_image").mkdir(parents=True, exist_ok=True)
        for record in records:
            image = record.get("imgPath") if isinstance(record, dict) else None
            if image and (self.dataset / "mention_image" / image).is_file():
                shutil.copy(self.dataset / "mention_image" / image, inbox / "mention_image" / image)
        path = inbox / name
        path.write_text(json.dumps(records))
        if settled:
            old = time.time() - 60
            os.utime(path, (old, old))
        return path

    def tick(self, instance, sensor, cursor=None):
        """One sensor evaluation, with its partition requests applied as the daemon applies them."""
        context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=self.defs,
                                          resources=self.resources)
        result = sensor(context)
        for request in getattr(result, "dynamic_partitions_requests", None) or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return result, getattr(result, "cursor", None) or context.cursor

    def run(self, instance, request: dg.RunRequest):
        job = self.defs.resolve_job_def(request.job_name or "link_inbox")
        return job.execute_in_process(instance=instance, partition_key=request.partition_key, raise_on_error=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("linking")
    generate_demo_dataset(root / "dataset", seed=11, num_entities=40, num_mentions=90)
    built = World(root)
    unpartitioned = [a for a in defs.assets if getattr(a, "partitions_def", None) is None]
    with dg.instance_for_test() as instance:
        result = dg.materialize(unpartitioned, instance=instance, resources=built.resources)
    assert result.success
    return built


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


def renamed(records: list, prefix: str) -> list:
    return [{**record, "id": f"{prefix}-{record['id']}"} for record in records]


def step_keys(result) -> set:
    return {event.step_key for event in result.all_events if event.is_step_success}


def test_one_tick_links_exactly_the_new_file_and_recomputes_nothing_else(world, instance):
    descriptions_before = world.lake.table_path("mention_descriptions").stat().st_mtime_ns
    runs_before = sorted((world.lake.root / "mmoe" / "runs").iterdir())
    records = renamed(world.test_records[:5], "a")
    del records[4]["answer"]  # the user's own data: no gold, linked all the same
    records.append({"id": "a-broken", "mentions": "Jordan"})  # no sentence: rejected, with its reason
    world.drop("batch-a.json", records)

    result, cursor = world.tick(instance, linking.inbox_sensor)
    [request] = result.run_requests
    assert request.partition_key == "batch-a.json"
    assert instance.get_dynamic_partitions("inbox_files") == ["batch-a.json"]
    run = world.run(instance, request)

    assert run.success and step_keys(run) == {"links"}  # nothing upstream runs, training least of all
    shown = metadata_of(run, "links")
    assert shown["records"] == 6 and shown["mentions_linked"] == 5 and shown["mentions_rejected"] == 1
    assert shown["features/encoded"] == 5 and shown["rerank/reranked"] == 5 and shown["candidates/searched"] == 5
    assert shown["descriptions/prompts"] == 5 and shown["labelled_mentions"] == 4
    assert 0 <= shown["accuracy"] <= 1 and "| record | mention |" in shown["top_links"]
    assert world.lake.table_path("mention_descriptions").stat().st_mtime_ns == descriptions_before
    assert sorted((world.lake.root / "mmoe" / "runs").iterdir()) == runs_before

    rows = {row["record_id"]: row for row in read_links(world.lake).to_pylist() if row["partition"] == "batch-a.json"}
    assert set(rows) == {record["id"] for record in records}
    unlabelled = rows[records[4]["id"]]
    assert unlabelled["status"] == "linked" and unlabelled["gold_qid"] is None and unlabelled["correct"] is None
    assert len(unlabelled["top_entities"]) == 10 and unlabelled["top_entities"][0]["qid"].startswith("Q")
    assert json.loads(unlabelled["routing"]) and json.loads(unlabelled["encoder"])["arch"] == "mel-tiny-clip"
    labelled = rows[records[0]["id"]]
    assert labelled["gold_qid"] == records[0]["answer"] and labelled["gold_rank"] >= 1
    assert rows["a-broken"]["status"] == "rejected" and "sentence" in rows["a-broken"]["problem"]

    again, _ = world.tick(instance, linking.inbox_sensor, cursor)
    assert isinstance(again, dg.SensorResult) and not again.run_requests  # nothing new: no run


def test_a_copy_in_progress_waits_and_a_duplicate_is_not_linked_twice(world, instance):
    records = renamed(world.test_records[5:8], "b")
    world.drop("batch-b.json", records)
    world.drop("copy-of-batch-b.json", records)  # the same bytes under another name
    world.drop("batch-c.json", renamed(world.test_records[8:10], "c"), settled=False)  # still being copied

    result, cursor = world.tick(instance, linking.inbox_sensor)

    # batch-a.json, linked by the test before, is known from the links table even to a fresh sensor.
    assert [r.partition_key for r in result.run_requests] == ["batch-b.json"]
    assert "batch-c.json" not in instance.get_dynamic_partitions("inbox_files")
    old = time.time() - 60
    os.utime(world.dataset / "inbox" / "batch-c.json", (old, old))  # the copy finished
    later, _ = world.tick(instance, linking.inbox_sensor, cursor)
    assert [r.partition_key for r in later.run_requests] == ["batch-c.json"]


def test_a_malformed_file_fails_its_own_partition_with_one_sentence(world, instance):
    broken = world.dataset / "inbox" / "batch-bad.json"
    broken.write_text('[{"id": 1, "sentence": "truncated')
    old = time.time() - 60
    os.utime(broken, (old, old))
    world.drop("batch-good.json", renamed(world.test_records[10:12], "g"))

    result, cursor = world.tick(instance, linking.inbox_sensor)
    runs = {request.partition_key: world.run(instance, request) for request in result.run_requests}

    assert runs["batch-good.json"].success
    assert not runs["batch-bad.json"].success
    [failure] = [e for e in runs["batch-bad.json"].all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "batch-bad.json cannot be read as mention records" in message and "Traceback" not in message

    os.utime(broken, (old + 1, old + 1))  # touched: a file whose run failed is tried again, a linked one is not
    os.utime(world.dataset / "inbox" / "batch-good.json", (old + 1, old + 1))
    retry, _ = world.tick(instance, linking.inbox_sensor, cursor)
    assert [r.partition_key for r in retry.run_requests] == ["batch-bad.json"]


def test_two_partitions_link_at_once_in_two_processes(world, tmp_path):
    """Two `dagster asset materialize` processes share the lookup and choice caches and the entity index."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "MEL_HOME": str(world.lake.root),
           "MEL_DATASET_DIR": str(world.dataset)}
    keys = ["batch-p.json", "batch-q.json"]
    for key, records in zip(keys, (world.dev_records[:3], world.dev_records[3:6])):
        world.drop(key, renamed(records, key[:-5]))
    with dg.DagsterInstance.from_config(str(home)) as shared:
        shared.add_dynamic_partitions("inbox_files", keys)
    command = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "assets.definitions",
               "--select", "links", "--partition"]
    processes = [subprocess.Popen(command + [key], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for key in keys]
    outputs = [process.communicate(timeout=600)[0] for process in processes]

    assert [process.returncode for process in processes] == [0, 0], [out[-3000:] for out in outputs]
    assert not any("in use by another process" in out for out in outputs)
    linked = read_links(world.lake).to_pylist()
    for key in keys:
        assert sum(1 for row in linked if row["partition"] == key) == 3


def test_a_partition_links_while_the_kb_is_re_embedded_in_another_process(world, tmp_path):
    """The schedule's job re-encodes every entity (force) while a partition links against the same stores and
    index: the reader sees one committed generation, the writer replaces it, neither fails."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "MEL_HOME": str(world.lake.root),
           "MEL_DATASET_DIR": str(world.dataset)}
    world.drop("batch-r.json", renamed(world.dev_records[6:9], "r"))
    with dg.DagsterInstance.from_config(str(home)) as shared:
        shared.add_dynamic_partitions("inbox_files", ["batch-r.json"])
    config = tmp_path / "reembed.json"  # the world's settings, so that nothing but the encoding is redone
    config.write_text(json.dumps({
        "ops": {"entity_features": {"config": {"force": True}}},
        "resources": {"training": {"config": SMALL_TRAINING}, "index": {"config": {"candidates_per_mention": 30}},
                      "clip": {"config": {"num_workers": 0}}}}))
    dagster = str(Path(sys.executable).parent / "dagster")
    reembed = subprocess.Popen([dagster, "job", "execute", "-m", "assets.definitions", "-j", "refresh_kb_features",
                                "-c", str(config)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    link = subprocess.Popen([dagster, "asset", "materialize", "-m", "assets.definitions", "--select", "links",
                             "--partition", "batch-r.json"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    outputs = [process.communicate(timeout=900)[0] for process in (reembed, link)]

    assert [reembed.returncode, link.returncode] == [0, 0], [out[-3000:] for out in outputs]
    assert sum(1 for row in read_links(world.lake).to_pylist() if row["partition"] == "batch-r.json") == 3


def test_ten_new_kb_entities_are_linkable_without_retraining(world, instance):
    runs_before = sorted((world.lake.root / "mmoe" / "runs").iterdir())
    kb_images = world.dataset / "kb_image"
    changes = []
    for i in range(10):
        qid = f"Q99000{i}"
        Image.new("RGB", (64, 64), (25 * i, 255 - 20 * i, (90 * i) % 256)).save(kb_images / f"{qid}_0.jpg")
        changes.append({"op": "upsert", "qid": qid, "entity_name": f"Quillon Varnet {i}",
                        "desc": f"fictional lighthouse keeper number {i}", "image_list": [f"{qid}_0.jpg"]})
    (world.dataset / "inbox" / "kb").mkdir(parents=True, exist_ok=True)
    (world.dataset / "inbox" / "kb" / "0001-new-keepers.json").write_text(json.dumps(changes))

    request, _ = world.tick(instance, __import__("assets.ingest", fromlist=["x"]).dataset_change_sensor)
    assert request.job_name in ("refresh_kb", "refresh_dataset")
    refresh = world.defs.resolve_job_def("refresh_kb").execute_in_process(instance=instance)
    assert refresh.success
    [index_event] = refresh.asset_materializations_for_node("entity_index")
    assert index_event.metadata["added"].value == 10 and index_event.metadata["action"].value != "rebuilt"
    [features_event] = refresh.asset_materializations_for_node("entity_features")
    assert features_event.metadata["items_encoded"].value == 10
    # the trained index: the ten new entities' vectors from their features, added in place by the same model
    [trained_event] = refresh.asset_materializations_for_node("retrieval_index")
    assert trained_event.metadata["entities_encoded"].value == 10 and trained_event.metadata["added"].value == 10
    assert trained_event.metadata["action"].value == "synced"

    shutil.copy(kb_images / "Q990003_0.jpg", world.dataset / "mention_image" / "keeper.jpg")
    mention = {"id": "k1", "sentence": "Quillon Varnet 3 kept the lighthouse burning all winter.",
               "mentions": "Quillon Varnet 3", "imgPath": "keeper.jpg", "answer": "Q990003"}
    world.drop("batch-keeper.json", [mention])
    result, _ = world.tick(instance, linking.inbox_sensor)
    [run] = [world.run(instance, r) for r in result.run_requests if r.partition_key == "batch-keeper.json"]

    assert run.success
    [row] = [r for r in read_links(world.lake).to_pylist() if r["partition"] == "batch-keeper.json"]
    assert "Q990003" in [entity["qid"] for entity in row["top_entities"]]
    assert sorted((world.lake.root / "mmoe" / "runs").iterdir()) == runs_before  # no retraining

    # Partitions linked before the KB change are out of date; the relink sensor asks for exactly those.
    relink = {r.partition_key: r for r in world.tick(instance, linking.relink_sensor)[0]}
    assert "batch-a.json" in relink and "batch-keeper.json" not in relink
    rerun = world.run(instance, relink["batch-a.json"])
    assert rerun.success
    shown = metadata_of(rerun, "links")  # only mentions whose candidates changed are reranked; nothing is encoded again
    assert shown["rerank/reranked"] + shown["rerank/reused"] == 5 and shown["features/encoded"] == 0
    assert "batch-a.json" not in {r.partition_key for r in world.tick(instance, linking.relink_sensor)[0]}


def test_the_schedule_re_embeds_everything_after_an_encoder_change_and_relinks(world, instance):
    """A user swaps the encoder (here: another seed); the scheduled job re-encodes, retrains on the new
    features, re-evaluates, and every linked partition is linked again with the new model and index."""
    world.tick(instance, linking.inbox_sensor)  # this instance knows the inbox partitions, as a user's does
    new_encoder = features.ClipResource(num_workers=0, seed=1)
    world.resources["clip"] = new_encoder
    world.defs = dg.Definitions(assets=list(defs.assets), asset_checks=list(defs.asset_checks), jobs=list(defs.jobs),
                                sensors=list(defs.sensors), resources=world.resources)
    context = dg.build_schedule_context(instance=instance)
    request = features.weekly_kb_features.evaluate_tick(context).run_requests[0]
    job = world.defs.resolve_job_def(features.weekly_kb_features.job_name)
    result = job.execute_in_process(instance=instance, run_config=request.run_config, raise_on_error=False)

    assert result.success
    done = {event.asset_key.path[-1] for event in result.get_asset_materialization_events()}
    assert {"entity_features", "mention_features", "entity_index", "mmoe_model", "evaluation"} <= done
    [entity_event] = result.asset_materializations_for_node("entity_features")
    assert entity_event.metadata["items_encoded"].value == 50  # 40 entities + the 10 added before
    stale = {r.partition_key for r in world.tick(instance, linking.relink_sensor)[0]}
    assert {"batch-a.json", "batch-keeper.json"} <= stale
    rerun = world.run(instance, dg.RunRequest(partition_key="batch-keeper.json"))
    assert rerun.success and metadata_of(rerun, "links")["features/encoded"] == 1
