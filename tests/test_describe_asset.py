"""The `mention_descriptions` asset, run through Dagster on a tiny dataset and a hand-written candidates table."""

import dagster as dg
import pyarrow as pa

from assets.descriptions import LLMResource, mention_descriptions
from assets.resources import LakeResource
from pipeline.ingest import IngestSettings, ingest_dataset
from pipeline.wikidata import CANDIDATES_SCHEMA
from tests.conftest import candidate_rows
from tests.conftest import metadata_of

UPSTREAM = [dg.AssetSpec("mentions"), dg.AssetSpec("wikidata_candidates")]  # materialized outside this run


def materialize(lake_root, llm: LLMResource, instance):
    return dg.materialize([*UPSTREAM, mention_descriptions], selection=[mention_descriptions], instance=instance,
                          resources={"lake": LakeResource(root=str(lake_root)), "llm": llm}, raise_on_error=False)


def test_asset_shows_counts_accuracy_and_reuses_its_table(dataset, lake, smol_folder):
    ingest_dataset(lake, IngestSettings(dataset.write()))
    candidates = candidate_rows("train:10", [("Q41421", "American basketball player"),
                                             ("Q810", "country in Western Asia")])
    lake.write_table("wikidata_candidates", pa.Table.from_pylist(candidates, schema=CANDIDATES_SCHEMA), "test")
    llm = LLMResource(model_path=str(smol_folder))

    with dg.instance_for_test() as instance:
        first = materialize(lake.root, llm, instance)
        second = materialize(lake.root, llm, instance)

    assert first.success and second.success
    shown = metadata_of(first, "mention_descriptions")
    assert shown["dagster/row_count"] == 3
    assert shown["mentions_no_candidates"] == 2
    assert shown["mentions_chosen"] + shown["mentions_none_of_these"] == 1
    assert shown["llm_calls"] == 1 and shown["cache_hits"] == 0
    assert shown["backend"] == "transformers" and shown["model"].startswith(smol_folder.name)
    assert 0.0 <= shown["accuracy_llm_all"] <= 1.0 and shown["accuracy_first_hit_train"] == 1.0
    assert "| train |" in shown["accuracy"] and shown["mentions_per_second"] > 0
    assert metadata_of(second, "mention_descriptions")["reused_stored_output"] is True and metadata_of(second, "mention_descriptions")["llm_calls"] == 0
    assert (shown["cache_hit_rate"], metadata_of(second, "mention_descriptions")["cache_hit_rate"]) == (0.0, 1.0)


def test_asset_without_candidates_table_fails_with_one_sentence(dataset, lake, smol_folder):
    ingest_dataset(lake, IngestSettings(dataset.write()))

    with dg.instance_for_test() as instance:
        result = materialize(lake.root, LLMResource(model_path=str(smol_folder)), instance)

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "The wikidata_candidates table has not been materialized yet" in message
    assert "materialize `wikidata_candidates` first." in message


def test_asset_with_a_bad_model_path_fails_naming_backend_and_path(dataset, lake, tmp_path):
    ingest_dataset(lake, IngestSettings(dataset.write()))
    lake.write_table("wikidata_candidates", pa.Table.from_pylist([], schema=CANDIDATES_SCHEMA), "test")

    with dg.instance_for_test() as instance:
        result = materialize(lake.root, LLMResource(model_path=str(tmp_path / "nowhere")), instance)

    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert f"The transformers backend cannot load model {tmp_path / 'nowhere'}: no such file or folder." in (
        failure.step_failure_data.error.message)


def test_asset_with_an_unknown_backend_fails_naming_the_resource_and_the_setting(dataset, lake):
    ingest_dataset(lake, IngestSettings(dataset.write()))
    lake.write_table("wikidata_candidates", pa.Table.from_pylist([], schema=CANDIDATES_SCHEMA), "test")

    with dg.instance_for_test() as instance:
        result = materialize(lake.root, LLMResource(backend="llama"), instance)

    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "LLMResource.backend 'llama' is not one of transformers, vllm." in failure.step_failure_data.error.message
    assert "export_dir" not in LLMResource.model_fields  # where GGUF exports go is the lake's business
