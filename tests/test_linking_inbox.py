"""Reading the inbox: which files become partitions, and what one file's records become (no model needed)."""

import json
import time

import pytest

from pipeline.errors import MELUserError
from pipeline.ingest import IngestSettings, ingest_dataset
from pipeline.linking import list_inbox, read_inbox_file


def test_names_that_cannot_be_partition_keys_are_listed_with_the_reason(dataset):
    inbox = dataset.write() / "inbox"
    inbox.mkdir()
    for name in ("good-1.json", "bad,name.json", "notes.txt", ".hidden.json", "copying.json.part"):
        (inbox / name).write_text("[]")

    listing = list_inbox(dataset.root)

    assert [item.key for item in listing.files] == ["good-1.json"]
    assert set(listing.ignored) == {"bad,name.json", "notes.txt"}  # hidden and partial files are not news
    assert "Dagster partition key" in listing.ignored["bad,name.json"]
    assert listing.files[0].settled(10, now=time.time() + 11) and not listing.files[0].settled(10)


def test_an_answer_outside_the_kb_or_none_at_all_leaves_the_mention_linkable_but_unscored(dataset, lake):
    ingest_dataset(lake, IngestSettings(dataset.write()))
    inbox = dataset.root / "inbox"
    inbox.mkdir()
    (inbox / "new.json").write_text(json.dumps([
        {"id": 1, "sentence": "Jordan scored 40 points.", "mentions": "Jordan", "imgPath": "", "answer": "Q41421"},
        {"id": 2, "sentence": "Jordan won again.", "mentions": "Jordan", "imgPath": "", "answer": "Q999"},
        {"id": 3, "sentence": "Jordan is in Asia.", "mentions": "Jordan", "imgPath": "missing.jpg"},
        {"id": 4, "mentions": "Jordan"},
    ]))

    batch = read_inbox_file(lake, dataset.root, "new.json")

    assert batch.mentions.column("mention_id").to_pylist() == ["new.json:1", "new.json:2", "new.json:3"]
    assert batch.labelled == [True, False, False]
    assert batch.notes["new.json:2"] == ["answer 'Q999' is not a QID of the KB: linked, not scored"]
    assert "bad_image" in batch.notes["new.json:3"][0] and "kept_without_image" in batch.notes["new.json:3"][0]
    [rejected] = batch.rejected
    assert rejected["record_id"] == "4" and rejected["reason_code"] == "missing_field"
    assert batch.records == 4


def test_a_file_that_holds_no_records_is_one_sentence(dataset, lake):
    ingest_dataset(lake, IngestSettings(dataset.write()))
    (dataset.root / "inbox").mkdir()
    (dataset.root / "inbox" / "empty.json").write_text("not json at all")

    with pytest.raises(MELUserError, match="empty.json cannot be read as mention records: no JSON records found"):
        read_inbox_file(lake, dataset.root, "empty.json")
    with pytest.raises(MELUserError, match="does not exist"):
        read_inbox_file(lake, dataset.root, "gone.json")
