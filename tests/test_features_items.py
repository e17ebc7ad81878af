"""Items from the lake's tables: the texts and images the encoder sees, and where descriptions come from."""

import pyarrow as pa
import pytest

from pipeline.errors import MELUserError
from pipeline.features import entity_items, mention_items
from pipeline.ingest import IngestSettings, ingest_dataset


@pytest.fixture
def ingested(dataset, lake):
    dataset.kb[2]["desc"] = ""  # Universe: no description
    dataset.splits["train"][0]["desc"] = "American basketball player"
    ingest_dataset(lake, IngestSettings(dataset.write()))
    return lake


def write_llm_descriptions(lake, rows: dict[str, str | None]):
    table = pa.table({
        "mention_id": list(rows), "chosen_qid": ["Q1"] * len(rows), "description": list(rows.values()),
        "score": [1.0] * len(rows), "status": ["ok"] * len(rows),
    })
    lake.write_table("mention_descriptions", table, fingerprint="test")


def test_entity_items_join_name_and_description_and_take_the_first_image(ingested, dataset):
    items = entity_items(ingested)

    assert items.ids == ["0", "1", "2"]
    assert items.texts == ["Jordan [SEP] American basketball player", "Jordan [SEP] country in Western Asia",
                           "Universe"]
    assert items.image_files[0] == str(dataset.root / "kb_image" / "Q41421_0.jpg")
    assert items.image_digests[0] is not None
    assert items.image_files[2] is None and items.image_digests[2] is None


def test_mention_items_use_the_record_description_when_no_llm_table_exists(ingested):
    items = mention_items(ingested, "auto")

    assert items.ids == ["train:10", "dev:20", "test:30"]
    assert items.texts[0] == "Jordan [SEP] Jordan scored 40 points. [SEP] American basketball player"
    assert items.texts[1] == "Jordan [SEP] Amman is the capital of Jordan."  # no description: left out
    assert items.recipe["resolved_description_source"] == "dataset"
    assert items.image_files[2] is None


def test_a_mention_kept_without_a_mention_string_is_encoded_from_its_sentence(dataset, lake):
    dataset.splits["test"][0]["mentions"] = " "
    ingest_dataset(lake, IngestSettings(dataset.write()))

    items = mention_items(lake, "auto")

    assert items.texts[items.ids.index("test:30")] == "The universe is expanding."


def test_auto_prefers_the_llm_descriptions_once_materialized(ingested):
    write_llm_descriptions(ingested, {"train:10": "Jordanian river", "dev:20": None})

    items = mention_items(ingested, "auto")

    assert items.texts[0] == "Jordan [SEP] Jordan scored 40 points. [SEP] Jordanian river"
    assert items.texts[1] == "Jordan [SEP] Amman is the capital of Jordan."
    assert items.recipe["resolved_description_source"] == "llm" and items.recipe["mentions_with_description"] == 1


def test_none_leaves_every_description_out_for_the_ablation(ingested):
    write_llm_descriptions(ingested, {"train:10": "Jordanian river"})

    items = mention_items(ingested, "none")

    assert items.texts[0] == "Jordan [SEP] Jordan scored 40 points."
    assert items.recipe["description_source"] == "none"


def test_the_description_source_changes_the_content_keys_of_affected_mentions_only(ingested):
    with_description = mention_items(ingested, "dataset").content_keys("identity")
    without = mention_items(ingested, "none").content_keys("identity")

    assert with_description[0] != without[0]
    assert with_description[1:] == without[1:]


def test_source_errors_are_one_sentence(ingested):
    with pytest.raises(MELUserError, match="description_source 'wikidata' is not one of"):
        mention_items(ingested, "wikidata")
    with pytest.raises(MELUserError, match="mention_descriptions table has not been materialized"):
        mention_items(ingested, "llm")


def test_missing_tables_are_named(tmp_path):
    from pipeline.lake import Lake

    with pytest.raises(MELUserError, match="The entities table has not been materialized yet"):
        entity_items(Lake(tmp_path / "empty"))
