"""The code location as the UI shows it: groups, descriptions and the registered checks."""

import dagster as dg

from assets.definitions import defs

GROUPS = {
    "ingest": {"dataset_files", "mentions", "entities", "quarantine"},
    "enhance": {"wikidata_candidates", "mention_descriptions"},
    "features": {"entity_feature_shards", "entity_features", "mention_features"},
    "index": {"entity_index", "mention_candidates", "retrieval_index", "retrieval_candidates"},
    "model": {"mmoe_model", "evaluation"},
    "linking": {"links"},
}


def test_the_code_location_loads():
    dg.Definitions.validate_loadable(defs)


def test_every_asset_sits_in_its_stage_group():
    graph = defs.resolve_asset_graph()
    groups: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        groups.setdefault(graph.get(key).group_name, set()).add(key.to_user_string())
    assert groups == GROUPS


def test_every_asset_has_a_description_a_person_can_read():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        description = graph.get(key).description or ""
        assert len(description.split()) >= 8, f"{key.to_user_string()} has no real description: {description!r}"


def test_staleness_follows_the_stages_code_versions():
    """Every stored stage says which version of its code wrote it, so "unsynced" in the UI means something.
    The feature assets are versioned by their encoder identity in the data version instead."""
    graph = defs.resolve_asset_graph()
    unversioned = {key.to_user_string() for key in graph.get_all_asset_keys()
                   if graph.get(key).is_materializable and graph.get(key).code_version is None}
    assert unversioned == {"entity_feature_shards", "entity_features", "mention_features"}


def test_the_kb_shards_are_a_partitioned_job_and_stay_out_of_the_whole_pipeline_jobs():
    """A backfill of embed_kb_shards is one run per shard; the jobs the sensors and the schedule launch run
    without a partition, so they leave the shards out (entity_features encodes small changes itself)."""
    shards = defs.resolve_job_def("embed_kb_shards")
    assert shards.partitions_def.get_partition_keys() == ["0", "1", "2", "3"]  # $MEL_KB_SHARDS unset: 4
    for name in ("refresh_dataset", "refresh_kb", "refresh_kb_features"):
        selected = defs.resolve_job_def(name).asset_layer.selected_asset_keys
        assert dg.AssetKey("entity_features") in selected and dg.AssetKey("entity_feature_shards") not in selected
