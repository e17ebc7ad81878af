"""The ingestion assets, run through Dagster as the UI runs them."""

import dagster as dg

from assets import ingest
from assets.definitions import defs
from assets.resources import DatasetResource, LakeResource
from tests.conftest import write_image
from tests.conftest import metadata_of


def materialize(dataset_dir, lake_root, instance):
    return dg.materialize(
        [ingest.mimic_dataset, ingest.quarantine_rate],
        instance=instance,
        resources={"lake": LakeResource(root=str(lake_root)), "dataset": DatasetResource(dataset_dir=str(dataset_dir))},
        raise_on_error=False,
    )


def log_messages(instance, run_id):
    return [record.user_message for record in instance.all_logs(run_id)]


def test_definitions_hold_every_stage_and_run_one_step_at_a_time():
    jobs = {job.name: job for job in defs.resolve_all_job_defs()}
    assert {key.path[-1] for key in defs.resolve_asset_graph().get_all_asset_keys()} == {
        "dataset_files", "mentions", "entities", "quarantine", "wikidata_candidates", "mention_descriptions",
        "entity_feature_shards", "entity_features",
        "mention_features", "entity_index", "mention_candidates", "retrieval_index", "retrieval_candidates",
        "mmoe_model", "evaluation", "links"}
    for name in ("refresh_dataset", "refresh_kb_features"):
        assert dg.AssetKey("links") not in jobs[name].asset_layer.selected_asset_keys  # partitioned: its own job
        executor = jobs[name].executor_def
        resolved = executor.config_schema.resolve_config({}).value
        assert executor.name == "multiprocess" and resolved["config"]["max_concurrent"] == 1


def test_materialization_shows_counts_and_previews(dataset, tmp_path):
    dataset.splits["dev"][0]["imgPath"] = "../../etc/passwd"
    with dg.instance_for_test() as instance:
        result = materialize(dataset.write(), tmp_path / "lake", instance)

    assert result.success
    mentions = metadata_of(result, "mentions")
    assert mentions["dagster/row_count"] == 2
    assert (mentions["mentions_train"], mentions["mentions_dev"], mentions["mentions_test"]) == (1, 0, 1)
    assert "Jordan" in mentions["preview"]
    assert mentions["reused_stored_output"] is False
    quarantine = metadata_of(result, "quarantine")
    assert quarantine["records_dropped"] == 1 and "path_escape" in quarantine["by_reason"]
    [check] = result.get_asset_check_evaluations()
    assert check.passed is False  # 1 of 6 records dropped is above the 5% warning line


def test_second_materialization_reuses_and_says_so(dataset, tmp_path):
    dataset.write()
    with dg.instance_for_test() as instance:
        first = materialize(dataset.root, tmp_path / "lake", instance)
        second = materialize(dataset.root, tmp_path / "lake", instance)
        second_logs = log_messages(instance, second.run_id)

    assert metadata_of(first, "mentions")["reused_stored_output"] is False
    assert metadata_of(second, "mentions")["reused_stored_output"] is True
    assert any("reusing the stored tables" in message for message in second_logs)
    assert metadata_of(first, "mentions")["fingerprint"] == metadata_of(second, "mentions")["fingerprint"]


def test_a_missing_dataset_fails_with_one_sentence(tmp_path):
    with dg.instance_for_test() as instance:
        result = materialize(tmp_path / "no_such_dataset", tmp_path / "lake", instance)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    error = failure.step_failure_data.error
    assert "The dataset directory" in error.message and "no_such_dataset does not exist." in error.message


def test_sensor_requests_a_refresh_only_when_a_file_changes(dataset, tmp_path):
    dataset.write()
    resources = {"lake": LakeResource(root=str(tmp_path / "lake")),
                 "dataset": DatasetResource(dataset_dir=str(dataset.root))}
    with dg.instance_for_test() as instance:
        def tick(cursor):
            context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
            return ingest.dataset_change_sensor(context), context.cursor

        first, cursor = tick(None)
        unchanged, _ = tick(cursor)
        write_image(dataset.root / "kb_image" / "new.jpg")
        kb_changed, cursor = tick(cursor)
        write_image(dataset.root / "mention_image" / "new.jpg")
        changed, new_cursor = tick(cursor)

    assert isinstance(first, dg.RunRequest) and first.job_name == "refresh_dataset"
    assert isinstance(unchanged, dg.SkipReason)
    # Only the KB changed: re-ingest and update the entity side; mentions, training and evaluation stay.
    assert isinstance(kb_changed, dg.RunRequest) and kb_changed.job_name == "refresh_kb"
    assert isinstance(changed, dg.RunRequest) and changed.job_name == "refresh_dataset" and new_cursor != cursor


def test_sensor_skips_an_unreadable_dataset(tmp_path):
    resources = {"lake": LakeResource(root=str(tmp_path / "lake")),
                 "dataset": DatasetResource(dataset_dir=str(tmp_path / "missing"))}
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources=resources)
        result = ingest.dataset_change_sensor(context)
    assert isinstance(result, dg.SkipReason) and "does not exist" in result.skip_message
