"""The feature assets, run through Dagster as the UI runs them."""

import dagster as dg

from assets import features, ingest
from assets.features import ClipResource
from assets.resources import DatasetResource, LakeResource
from pipeline import catalog
from pipeline.features import FeatureStore
from pipeline.lake import Lake
from tests.conftest import data_version, metadata_of

ASSETS = [ingest.mimic_dataset, features.entity_features, features.mention_features]
CHECKS = [features.entity_features_cover_entities, features.mention_features_cover_mentions]


def materialize(dataset_dir, lake_root, instance, clip=None, description_source="auto"):
    return dg.materialize(
        [*ASSETS, *CHECKS],
        instance=instance,
        resources={
            "lake": LakeResource(root=str(lake_root), description_source=description_source),
            "dataset": DatasetResource(dataset_dir=str(dataset_dir)),
            "clip": clip or ClipResource(num_workers=0),
        },
        raise_on_error=False,
    )


def test_features_are_materialized_with_counts_identity_and_an_untrained_warning(dataset, tmp_path):
    dataset.kb[0]["image_list"] = ["Q41421_0.jpg"]
    with dg.instance_for_test() as instance:
        result = materialize(dataset.write(), tmp_path / "lake", instance)

    assert result.success
    entities = metadata_of(result, "entity_features")
    assert entities["dagster/row_count"] == 3 and entities["items_encoded"] == 3 and entities["items_reused"] == 0
    assert entities["items_without_image"] == 1
    assert entities["encoder"]["weights"] == "random-init seed=0"
    assert "UNTRAINED random-init encoder" in entities["WARNING"]
    assert entities["size_on_disk_bytes"] > entities["parquet_bytes"] > 0
    store = FeatureStore.open(catalog.entity_store_dir(Lake(tmp_path / "lake")))
    assert data_version(result, "entity_features") == store.fingerprint
    mentions = metadata_of(result, "mention_features")
    assert mentions["dagster/row_count"] == 3 and mentions["recipe"]["resolved_description_source"] == "dataset"
    assert all(check.passed for check in result.get_asset_check_evaluations())


def test_a_second_materialization_encodes_nothing_and_keeps_the_data_version(dataset, tmp_path):
    dataset.write()
    with dg.instance_for_test() as instance:
        first = materialize(dataset.root, tmp_path / "lake", instance)
        second = materialize(dataset.root, tmp_path / "lake", instance)

    assert metadata_of(second, "entity_features")["items_encoded"] == 0
    assert metadata_of(second, "entity_features")["items_reused"] == 3
    assert metadata_of(second, "mention_features")["store_rewritten"] is False
    for key in ("entity_features", "mention_features"):
        assert data_version(first, key) == data_version(second, key)


def test_the_ablation_source_gets_its_own_mention_store(dataset, tmp_path):
    dataset.write()
    with dg.instance_for_test() as instance:
        materialize(dataset.root, tmp_path / "lake", instance)
        ablation = materialize(dataset.root, tmp_path / "lake", instance, description_source="none")

    lake = Lake(tmp_path / "lake")
    assert ablation.success
    assert FeatureStore.open(lake.root / "features/mention_features").recipe["description_source"] == "auto"
    assert FeatureStore.open(lake.root / "features/mention_features_desc-none").recipe["description_source"] == "none"


def test_a_bad_encoder_setting_fails_with_one_sentence(dataset, tmp_path):
    dataset.write()
    with dg.instance_for_test() as instance:
        result = materialize(dataset.root, tmp_path / "lake", instance, clip=ClipResource(arch="ViT-Nope"))

    failures = [e for e in result.all_events if e.is_step_failure]
    assert failures
    assert all("'ViT-Nope' is not an open_clip architecture" in e.step_failure_data.error.message for e in failures)


def test_a_bad_description_source_names_the_lake_resource(dataset, tmp_path):
    dataset.write()
    with dg.instance_for_test() as instance:
        result = materialize(dataset.root, tmp_path / "lake", instance, description_source="wikidata")

    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "mention_features"
    assert ("LakeResource.description_source 'wikidata' is not one of auto, llm, dataset, none."
            in failure.step_failure_data.error.message)


def test_the_weekly_kb_schedule_is_stopped_by_default_and_loads_with_the_assets():
    defs = dg.Definitions(
        assets=ASSETS, asset_checks=CHECKS, jobs=[features.kb_features_job], schedules=[features.weekly_kb_features],
        resources={"lake": LakeResource(), "dataset": DatasetResource(), "clip": ClipResource()},
    )

    dg.Definitions.validate_loadable(defs)
    assert features.weekly_kb_features.default_status == dg.DefaultScheduleStatus.STOPPED
    job = defs.resolve_job_def("refresh_kb_features")
    assert dg.AssetKey("entity_features") in job.asset_layer.selected_asset_keys


def test_the_shard_sensor_assembles_once_every_shard_is_newer_than_entity_features(dataset, tmp_path):
    """A backfill of embed_kb_shards ends with refresh_kb_features, started by kb_shards_sensor (4 shards of a
    3-entity KB: shard 3 is empty, and still a partition to wait for)."""
    from assets.definitions import defs

    def evaluate(instance):
        return features.kb_shards_sensor(dg.build_sensor_context(instance=instance, definitions=defs))

    dataset.write()
    resources = {"lake": LakeResource(root=str(tmp_path / "lake")),
                 "dataset": DatasetResource(dataset_dir=str(dataset.root)), "clip": ClipResource(num_workers=0)}
    with dg.instance_for_test() as instance:
        dg.materialize([ingest.mimic_dataset], instance=instance, resources=resources)
        for shard in ("0", "1", "2"):
            dg.materialize([features.entity_feature_shards], partition_key=shard, instance=instance,
                           resources=resources)
        assert evaluate(instance).skip_message == "KB shard 3 of 4 has not been materialized yet."

        dg.materialize([features.entity_feature_shards], partition_key="3", instance=instance, resources=resources)
        request = evaluate(instance)
        assert isinstance(request, dg.RunRequest) and request.run_key.startswith("kb-shards:")

        assembled = dg.materialize([features.entity_features], instance=instance, resources=resources)
        assert metadata_of(assembled, "entity_features")["items_encoded"] == 0
        assert metadata_of(assembled, "entity_features")["parts_linked"] == 3
        assert evaluate(instance).skip_message == "entity_features is newer than every KB shard."
