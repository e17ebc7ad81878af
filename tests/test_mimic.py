"""Ingestion of the MIMIC layout: what is kept, what is quarantined and why."""

import json

import pytest

from pipeline.errors import MELUserError
from pipeline.hashing import table_content_hash
from pipeline.ingest import IngestSettings, ingest_dataset
from tests.conftest import write_image


def ingest(dataset, lake):
    report = ingest_dataset(lake, IngestSettings(dataset.write()))
    mentions = {row["mention_id"]: row for row in lake.read_table("mentions").to_pylist()}
    quarantine = lake.read_table("quarantine").to_pylist()
    return report, mentions, quarantine


def only_row(rows, **match):
    found = [row for row in rows if all(row[k] == v for k, v in match.items())]
    assert len(found) == 1, f"expected one row matching {match}, got {found}"
    return found[0]


# -- the real MIMIC field names ------------------------------------------------------------


def test_reads_every_split_and_the_kb(dataset, lake):
    report, mentions, quarantine = ingest(dataset, lake)

    assert sorted(mentions) == ["dev:20", "test:30", "train:10"]
    train = mentions["train:10"]
    assert (train["split"], train["mention"], train["gold_qid"], train["gold_index"]) == ("train", "Jordan", "Q41421", 0)
    assert train["image_path"] == "mention_image/10.jpg" and train["has_image"]
    assert train["image_digest"] and len(train["image_digest"]) == 32
    assert mentions["test:30"]["has_image"] is False and mentions["test:30"]["image_path"] is None

    entities = lake.read_table("entities").to_pylist()
    assert [(e["kb_index"], e["qid"], e["name"]) for e in entities] == [
        (0, "Q41421", "Jordan"), (1, "Q810", "Jordan"), (2, "Q1", "Universe")]
    assert entities[0]["image_paths"] == ["kb_image/Q41421_0.jpg"]
    assert entities[0]["description"] == "American basketball player"
    assert entities[2]["has_image"] is False
    assert quarantine == []
    assert report.stats["mentions_train"] == 1 and report.stats["entities"] == 3


def test_string_ids_quoted_mentions_and_renamed_images(dataset, lake):
    dataset.prefix = "wiki_diverse"
    dataset.mention_image_dir = "mention_images"  # RichpediaMEL's folder name
    dataset.write()
    dataset.splits["train"][0].update(id="WD_7", mentions="Jordan%20River", imgPath="7.png")
    write_image(dataset.root / "mention_images" / "7.jpg")  # converted to JPEG, name kept
    ingest_dataset(lake, IngestSettings(dataset.write_json()))

    mentions = {row["mention_id"]: row for row in lake.read_table("mentions").to_pylist()}
    quarantine = lake.read_table("quarantine").to_pylist()

    row = mentions["train:WD_7"]
    assert row["mention"] == "Jordan River"
    assert row["image_path"] == "mention_images/7.jpg"
    assert quarantine == []


def test_nil_answers_are_kept_flagged_and_counted(dataset, lake):
    dataset.splits["train"].append(
        {"id": 11, "sentence": "Nobody knows Zork.", "mentions": "Zork", "imgPath": "", "answer": "nil"})

    report, mentions, quarantine = ingest(dataset, lake)

    nil = mentions["train:11"]
    assert nil["is_nil"] and nil["gold_qid"] is None and nil["gold_index"] is None
    assert report.stats["nil_train"] == 1
    assert quarantine == []


def test_a_record_description_is_kept(dataset, lake):
    dataset.splits["dev"][0]["desc"] = "country in Western Asia"
    _, mentions, _ = ingest(dataset, lake)
    assert mentions["dev:20"]["description"] == "country in Western Asia"


# -- every quarantine reason ---------------------------------------------------------------


def test_malformed_json_costs_only_the_broken_record(dataset, lake):
    dataset.write()
    good = json.dumps(dataset.splits["train"][0])
    other = json.dumps({**dataset.splits["train"][0], "id": 12})
    (dataset.root / "WIKIMEL_train.json").write_text(f'[{good},\n{{"id": 11, "sentence": oops}},\n{other}]')

    report = ingest_dataset(lake, IngestSettings(dataset.root))

    mentions = lake.read_table("mentions").column("mention_id").to_pylist()
    assert "train:10" in mentions and "train:12" in mentions
    row = only_row(lake.read_table("quarantine").to_pylist(), reason_code="malformed_json")
    assert (row["file"], row["record_index"], row["action"]) == ("WIKIMEL_train.json", 1, "dropped")
    assert "line 2" in row["reason"]
    assert report.stats["quarantined_records"] == 1


def test_truncated_file_keeps_the_complete_records(dataset, lake):
    dataset.write()
    text = (dataset.root / "WIKIMEL_train.json").read_text()
    records = json.dumps([dataset.splits["train"][0], {**dataset.splits["train"][0], "id": 12}])
    (dataset.root / "WIKIMEL_train.json").write_text(records[: len(records) - 20])
    assert text  # the valid file existed before it was cut

    ingest_dataset(lake, IngestSettings(dataset.root))

    assert "train:10" in lake.read_table("mentions").column("mention_id").to_pylist()
    row = only_row(lake.read_table("quarantine").to_pylist(), reason_code="malformed_json")
    assert "truncated" in row["reason"]


def test_missing_field(dataset, lake):
    del dataset.splits["dev"][0]["sentence"]
    _, mentions, quarantine = ingest(dataset, lake)
    assert "dev:20" not in mentions
    row = only_row(quarantine, reason_code="missing_field")
    assert (row["file"], row["record_index"], row["record_id"], row["field"]) == ("WIKIMEL_dev.json", 0, "20", "sentence")


def test_wrong_type_and_no_text_at_all(dataset, lake):
    dataset.splits["train"].append({**dataset.splits["train"][0], "id": 11, "sentence": ["not", "text"]})
    dataset.splits["train"].append({**dataset.splits["train"][0], "id": 12, "mentions": "  ", "sentence": " "})
    _, mentions, quarantine = ingest(dataset, lake)
    assert only_row(quarantine, reason_code="wrong_type")["field"] == "sentence"
    dropped = only_row(quarantine, reason_code="empty_text")
    assert (dropped["record_id"], dropped["action"]) == ("12", "dropped")
    assert "train:11" not in mentions and "train:12" not in mentions


def test_an_empty_mention_string_is_kept_and_linked_on_its_sentence(dataset, lake):
    # RichpediaMEL's test split has such a record: dropping it would take it out of the test metrics
    dataset.splits["test"][0]["mentions"] = "  "
    report, mentions, quarantine = ingest(dataset, lake)
    kept = mentions["test:30"]
    assert kept["mention"] == "" and kept["sentence"] == "The universe is expanding." and kept["gold_index"] == 2
    flag = only_row(quarantine, reason_code="empty_text")
    assert (flag["record_id"], flag["field"], flag["action"]) == ("30", "mentions", "kept_linked_on_sentence")
    assert report.stats["mentions_test"] == 1 and report.stats["quarantined_records"] == 0


def test_an_empty_sentence_is_kept_with_its_mention_text(dataset, lake):
    dataset.splits["dev"][0]["sentence"] = ""
    report, mentions, quarantine = ingest(dataset, lake)
    assert mentions["dev:20"]["mention"] == "Jordan" and mentions["dev:20"]["sentence"] == ""
    flag = only_row(quarantine, reason_code="empty_text")
    assert (flag["record_id"], flag["field"], flag["action"]) == ("20", "sentence", "kept_without_sentence")
    assert report.stats["quarantined_records"] == 0


@pytest.mark.parametrize("split, field, value, mention_id, reason_code", [
    ("test", "answer", "Q999", "test:30", "unknown_gold_qid"),  # gold QID not in the KB
    ("dev", "imgPath", "../../etc/passwd", "dev:20", "path_escape"),  # image path escaping the dataset
])
def test_a_gold_qid_outside_the_kb_or_an_escaping_image_path_drops_the_record(
        dataset, lake, split, field, value, mention_id, reason_code):
    dataset.splits[split][0][field] = value
    _, mentions, quarantine = ingest(dataset, lake)
    assert mention_id not in mentions
    row = only_row(quarantine, reason_code=reason_code)
    assert value in row["reason"] and row["field"] == field and row["action"] == "dropped"


def test_kb_image_path_escaping_drops_the_entity_and_its_mentions(dataset, lake):
    dataset.kb[1]["image_list"] = ["/etc/passwd"]
    _, mentions, quarantine = ingest(dataset, lake)
    assert only_row(quarantine, reason_code="path_escape")["file"] == "kb_entity.json"
    assert only_row(quarantine, reason_code="unknown_gold_qid")["record_id"] == "20"
    assert "dev:20" not in mentions


def test_corrupt_or_missing_image_keeps_the_mention_as_text_only(dataset, lake):
    dataset.write()
    (dataset.root / "mention_image" / "10.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    dataset.splits["dev"][0]["imgPath"] = "does_not_exist.jpg"
    ingest_dataset(lake, IngestSettings(dataset.write_json()))

    mentions = {row["mention_id"]: row for row in lake.read_table("mentions").to_pylist()}
    quarantine = lake.read_table("quarantine").to_pylist()

    assert mentions["train:10"]["has_image"] is False and mentions["train:10"]["image_path"] is None
    assert mentions["dev:20"]["has_image"] is False
    bad = sorted((r["record_id"], r["action"]) for r in quarantine if r["reason_code"] == "bad_image")
    assert bad == [("10", "kept_without_image"), ("20", "kept_without_image")]
    assert any("does not exist" in r["reason"] for r in quarantine)


def test_truncated_jpeg_is_reported(dataset, lake):
    dataset.write()
    path = dataset.root / "kb_image" / "Q810_0.jpg"
    write_image(path, size=(256, 256))
    path.write_bytes(path.read_bytes()[:400])

    ingest_dataset(lake, IngestSettings(dataset.root))

    row = only_row(lake.read_table("quarantine").to_pylist(), reason_code="bad_image")
    assert row["file"] == "kb_entity.json" and row["action"] == "ignored"
    jordan = lake.read_table("entities").to_pylist()[1]
    assert jordan["has_image"] is False and jordan["image_paths"] == []


def test_duplicate_ids(dataset, lake):
    dataset.splits["train"].append({**dataset.splits["train"][0], "sentence": "A second record with id 10."})
    dataset.kb.append({**dataset.kb[2], "entity_name": "Another universe"})
    _, mentions, quarantine = ingest(dataset, lake)
    duplicates = sorted((r["file"], r["record_index"]) for r in quarantine if r["reason_code"] == "duplicate_id")
    assert duplicates == [("WIKIMEL_train.json", 1), ("kb_entity.json", 3)]
    assert mentions["train:10"]["sentence"] == "Jordan scored 40 points."  # the first one wins


def test_non_utf8_text(dataset, lake):
    dataset.write()
    raw = json.dumps(dataset.splits["test"]).encode().replace(b"expanding", b"expand\xe9ng")
    (dataset.root / "WIKIMEL_test.json").write_bytes(raw)

    ingest_dataset(lake, IngestSettings(dataset.root))

    row = only_row(lake.read_table("quarantine").to_pylist(), reason_code="non_utf8")
    assert (row["file"], row["field"]) == ("WIKIMEL_test.json", "sentence")
    assert lake.read_table("mentions").num_rows == 2


# -- the dataset itself is unusable: one clear sentence ------------------------------------


def test_missing_dataset_directory(tmp_path, lake):
    with pytest.raises(MELUserError, match=r"The dataset directory .*nowhere does not exist\."):
        ingest_dataset(lake, IngestSettings(tmp_path / "nowhere"))


def test_missing_required_file(dataset, lake):
    dataset.write()
    (dataset.root / "kb_entity.json").unlink()
    with pytest.raises(MELUserError, match=r"The dataset is missing .*kb_entity\.json\."):
        ingest_dataset(lake, IngestSettings(dataset.root))


def test_missing_split_file(dataset, lake):
    dataset.write()
    (dataset.root / "WIKIMEL_dev.json").unlink()
    with pytest.raises(MELUserError, match=r"has no \*_dev\.json file"):
        ingest_dataset(lake, IngestSettings(dataset.root))


def test_unreadable_qid2id(dataset, lake):
    dataset.write()
    (dataset.root / "qid2id.json").write_text('{"Q1": 2')
    with pytest.raises(MELUserError, match=r"qid2id\.json cannot be read"):
        ingest_dataset(lake, IngestSettings(dataset.root))


# -- reuse by content hash -----------------------------------------------------------------


def test_unchanged_inputs_reuse_the_stored_tables(dataset, lake):
    first = ingest_dataset(lake, IngestSettings(dataset.write()))
    written = lake.table_path("mentions").stat().st_mtime_ns

    second = ingest_dataset(lake, IngestSettings(dataset.root))

    assert (first.reused, second.reused) == (False, True)
    assert second.fingerprint == first.fingerprint
    assert lake.table_path("mentions").stat().st_mtime_ns == written


def test_touched_but_identical_files_are_still_reused(dataset, lake):
    ingest_dataset(lake, IngestSettings(dataset.write()))
    kb = dataset.root / "kb_entity.json"
    kb.write_bytes(kb.read_bytes())  # new mtime, same content
    assert ingest_dataset(lake, IngestSettings(dataset.root)).reused


def test_the_report_describes_the_tables_it_wrote(dataset, lake):
    first = ingest_dataset(lake, IngestSettings(dataset.write()))
    reused = ingest_dataset(lake, IngestSettings(dataset.root))

    for report in (first, reused):
        assert set(report.tables) == {"mentions", "entities", "quarantine"}
        mentions = report.tables["mentions"]
        assert mentions.path == lake.table_path("mentions") and mentions.num_rows == 3
        assert mentions.content_hash == table_content_hash(lake.read_table("mentions"))
        assert mentions.fingerprint == report.fingerprint and mentions.head[0]["mention_id"] == "train:10"
    forced = ingest_dataset(lake, IngestSettings(dataset.root, force=True))
    assert not forced.reused and forced.tables["entities"].content_hash == first.tables["entities"].content_hash


def test_changed_content_is_ingested_again(dataset, lake):
    first = ingest_dataset(lake, IngestSettings(dataset.write()))
    write_image(dataset.root / "mention_image" / "20.jpg", color=(0, 255, 0))

    second = ingest_dataset(lake, IngestSettings(dataset.root))

    assert not second.reused and second.fingerprint != first.fingerprint


# -- KB change files (inbox/kb/*.json) -------------------------------------------------------------------


def test_kb_change_files_upsert_add_and_remove_entities_in_name_order(dataset, lake):
    dataset.write()
    write_image(dataset.root / "kb_image" / "Q77_0.jpg")
    changes = dataset.root / "inbox" / "kb"
    changes.mkdir(parents=True)
    (changes / "001.json").write_text(json.dumps([
        {"op": "upsert", "qid": "Q810", "entity_name": "Jordan", "desc": "Hashemite kingdom in Western Asia",
         "image_list": ["Q810_0.jpg"]},  # an edit keeps its KB index
        {"op": "upsert", "qid": "Q77", "entity_name": "Uruguay", "desc": "country in South America",
         "image_list": ["Q77_0.jpg"]},  # a new entity takes the next free index
    ]))
    (changes / "002.json").write_text(json.dumps([
        {"op": "upsert", "qid": "Q77", "entity_name": "Uruguay", "desc": "republic in South America",
         "image_list": ["Q77_0.jpg"]},  # the later file wins
        {"op": "remove", "qid": "Q1"},
    ]))
    dataset.splits["test"] = []  # its mention pointed at Q1

    report, _, quarantine = ingest(dataset, lake)

    entities = {row["qid"]: row for row in lake.read_table("entities").to_pylist()}
    assert set(entities) == {"Q41421", "Q810", "Q77"}
    assert entities["Q810"]["kb_index"] == 1 and entities["Q810"]["description"].startswith("Hashemite")
    assert entities["Q77"]["kb_index"] == 3 and entities["Q77"]["description"] == "republic in South America"
    assert entities["Q77"]["has_image"] and not [r for r in quarantine if r["reason_code"] == "bad_kb_change"]


def test_a_kb_change_that_cannot_apply_is_quarantined_and_the_kb_keeps_the_entity(dataset, lake):
    dataset.write()
    changes = dataset.root / "inbox" / "kb"
    changes.mkdir(parents=True)
    (changes / "bad.json").write_text(json.dumps([
        {"op": "rename", "qid": "Q810"},
        {"op": "remove", "qid": "Q404"},
        {"op": "upsert", "qid": "Q810", "id": 0, "entity_name": "Jordan"},
        {"op": "upsert", "entity_name": "no qid"},
    ]))

    _, _, quarantine = ingest(dataset, lake)

    reasons = [row["reason"] for row in quarantine if row["reason_code"] == "bad_kb_change"]
    assert len(reasons) == 4 and all(row["file"] == "inbox/kb/bad.json" for row in quarantine
                                     if row["reason_code"] == "bad_kb_change")
    assert "op 'rename' is not one of upsert, remove." in reasons
    assert "remove Q404: the KB has no such entity." in reasons
    assert "upsert Q810: the KB has it at index 1, not 0." in reasons
    entities = {row["qid"]: row for row in lake.read_table("entities").to_pylist()}
    assert set(entities) == {"Q41421", "Q810", "Q1"} and entities["Q810"]["description"] == "country in Western Asia"
