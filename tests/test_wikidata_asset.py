"""The `wikidata_candidates` asset, materialized through Dagster on a tiny dataset."""

import dataclasses

import dagster as dg
import pytest

from assets import ingest
from assets.resources import DatasetResource, LakeResource
from assets.wikidata import (
    WikidataResource,
    wikidata_candidates,
    wikidata_lookup_failures,
)
from pipeline.lake import Lake
from pipeline.wikidata import WikidataSettings, default_user_agent
from tests.wikidata_fakes import LocalWikidata, Reply, item, write_dump
from tests.conftest import failure_message, metadata_of

DUMP_ENTITIES = [
    item("Q1", "Universe", "totality of space and time"),
    item("Q810", "Jordan", "country in Western Asia"),
    item("Q41421", "Michael Jordan", "American basketball player", aliases=["Jordan"]),
    {"type": "property", "id": "P31", "labels": {"en": {"language": "en", "value": "instance of"}}},
]


@pytest.fixture(autouse=True)
def no_dump_from_the_environment(monkeypatch):
    monkeypatch.delenv("MEL_WIKIDATA_DUMP", raising=False)


def materialize(dataset_dir, lake_root, instance, wikidata: WikidataResource, with_ingest=True):
    assets = [ingest.mimic_dataset, wikidata_candidates] if with_ingest else [wikidata_candidates]
    return dg.materialize(
        [*assets, wikidata_lookup_failures],
        instance=instance,
        resources={"lake": LakeResource(root=str(lake_root)), "dataset": DatasetResource(dataset_dir=str(dataset_dir)),
                   "wikidata": wikidata},
        raise_on_error=False,
    )


def test_candidates_come_from_the_dump_the_dataset_carries(dataset, tmp_path):
    dataset.write()
    write_dump(dataset.root / "wikidata" / "wikidata-tiny.json.gz", DUMP_ENTITIES)

    with dg.instance_for_test() as instance:
        result = materialize(dataset.root, tmp_path / "lake", instance, WikidataResource())

    assert result.success
    metadata = metadata_of(result, "wikidata_candidates")
    assert metadata["source"] == "dump" and metadata["source_location"].endswith("wikidata-tiny.json.gz")
    assert metadata["mentions"] == 3 and metadata["mentions_with_candidates"] == 3
    assert metadata["mentions_without_candidates"] == 0
    assert metadata["dump_lines_read"] == 6 and metadata["http_requests"] == 0 and metadata["failures"] == 0
    assert metadata["dump_skipped_by_reason"] == {"property": 1}
    assert "country in Western Asia" in metadata["preview"]
    table = Lake(tmp_path / "lake").read_table("wikidata_candidates")
    train = [row for row in table.to_pylist() if row["mention_id"] == "train:10"]
    assert [(r["rank"], r["qid"], r["match"]) for r in train] == [(0, "Q810", "label"), (1, "Q41421", "alias")]
    [check] = result.get_asset_check_evaluations()
    assert check.passed


def test_a_mention_without_a_mention_string_is_an_empty_search_not_a_failure(dataset, tmp_path):
    dataset.splits["test"][0]["mentions"] = " "  # kept by ingestion, linked on its sentence
    dataset.write()
    write_dump(dataset.root / "wikidata" / "wikidata-tiny.json.gz", DUMP_ENTITIES)

    with dg.instance_for_test() as instance:
        result = materialize(dataset.root, tmp_path / "lake", instance, WikidataResource())

    metadata = metadata_of(result, "wikidata_candidates")
    assert result.success and metadata["mentions"] == 3
    assert metadata["mentions_empty_search"] == 1 and metadata["mentions_failed_lookup"] == 0
    [check] = result.get_asset_check_evaluations()
    assert check.passed


def test_a_second_materialization_reuses_the_tables_without_reading_the_dump(dataset, tmp_path):
    dataset.write()
    write_dump(dataset.root / "wikidata" / "wikidata-tiny.json.gz", DUMP_ENTITIES)

    with dg.instance_for_test() as instance:
        first = materialize(dataset.root, tmp_path / "lake", instance, WikidataResource())
        second = materialize(dataset.root, tmp_path / "lake", instance, WikidataResource())

    before, after = metadata_of(first, "wikidata_candidates"), metadata_of(second, "wikidata_candidates")
    assert after["reused_stored_output"] is True and after["dump_lines_read"] == 0
    assert (before["cache_hit_rate"], after["cache_hit_rate"]) == (0.0, 1.0)  # cold, then nothing to look up
    assert after["dagster/row_count"] == before["dagster/row_count"]
    [first_event] = first.asset_materializations_for_node("wikidata_candidates")
    [second_event] = second.asset_materializations_for_node("wikidata_candidates")
    assert first_event.tags["dagster/data_version"] == second_event.tags["dagster/data_version"]


def test_the_dump_named_by_the_environment_is_used(dataset, tmp_path, monkeypatch):
    dataset.write()
    dump = write_dump(tmp_path / "elsewhere" / "latest-all.json.bz2", DUMP_ENTITIES)
    monkeypatch.setenv("MEL_WIKIDATA_DUMP", str(dump))

    with dg.instance_for_test() as instance:
        result = materialize(dataset.root, tmp_path / "lake", instance, WikidataResource(source="dump"))

    assert result.success and metadata_of(result, "wikidata_candidates")["source_location"] == str(dump)


def test_the_api_source_finishes_despite_a_failed_lookup_and_the_next_run_retries_only_it(dataset, tmp_path):
    dataset.write()  # mentions: "Jordan" (twice) and "universe"
    with LocalWikidata() as server, dg.instance_for_test() as instance:
        server.fail("universe", Reply(503, b"Service Unavailable"))
        api = WikidataResource(source="api", endpoint=server.url, max_retries=0, requests_per_second=1000,
                               user_agent="mmoe-mel-tests/1 (tests@localhost)")
        first = materialize(dataset.root, tmp_path / "lake", instance, api)
        searched_in_first_run = len(server.searched())
        second = materialize(dataset.root, tmp_path / "lake", instance, api)
        second_searches = server.searched()[searched_in_first_run:]

    assert first.success
    before, after = metadata_of(first, "wikidata_candidates"), metadata_of(second, "wikidata_candidates")
    assert before["failures"] == 1 and before["mentions_failed_lookup"] == 1
    assert "http_503" in before["failures_by_reason"]
    assert "universe" in before["failures_preview"]
    [check] = first.get_asset_check_evaluations()
    assert not check.passed and check.metadata["failed_lookups"].value == 1
    assert after["reused_stored_output"] is False and second_searches == ["universe"]
    assert after["http_requests"] == 1 and after["cache_hits"] == 1 and after["failures"] == 0
    assert after["cache_hit_rate"] == 0.5  # "jordan" from the cache, "universe" asked again
    assert after["mentions_with_candidates"] == 3


def test_a_dump_source_without_a_dump_fails_with_one_sentence(dataset, tmp_path):
    dataset.write()

    with dg.instance_for_test() as instance:
        result = materialize(dataset.root, tmp_path / "lake", instance, WikidataResource(source="dump"))

    assert not result.success
    assert "no dump is configured; set `dump_path`" in failure_message(result)


def test_a_bad_setting_fails_naming_the_resource_and_the_setting(dataset, tmp_path):
    dataset.write()

    with dg.instance_for_test() as instance:
        result = materialize(dataset.root, tmp_path / "lake", instance, WikidataResource(language="English"))

    assert not result.success
    assert "WikidataResource.language 'English' is not a WikiData language code such as 'en'." in (
        failure_message(result))


def test_the_resource_holds_the_settings_with_their_defaults_and_documentation():
    fields = WikidataResource.model_fields
    assert list(fields) == [field.name for field in dataclasses.fields(WikidataSettings)]
    assert WikidataResource().user_agent == default_user_agent() and WikidataResource().max_candidates == 10
    assert fields["dump_path"].description == "A WikiData JSON dump (.json, .json.gz or .json.bz2)."
    assert WikidataResource(source="api", max_retries=0).settings() == WikidataSettings(source="api", max_retries=0)


def test_without_mentions_the_asset_says_what_to_materialize_first(dataset, tmp_path):
    with dg.instance_for_test() as instance:
        result = materialize(dataset.root, tmp_path / "lake", instance, WikidataResource(source="api"),
                             with_ingest=False)

    assert not result.success
    assert "materialize `mentions` first" in failure_message(result)


def test_definitions_with_the_asset_load():
    defs = dg.Definitions(
        assets=[ingest.mimic_dataset, wikidata_candidates],
        asset_checks=[wikidata_lookup_failures],
        resources={"lake": LakeResource(), "dataset": DatasetResource(), "wikidata": WikidataResource()},
    )
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("wikidata_candidates")).group_name == "enhance"
