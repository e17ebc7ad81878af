"""Mention candidates from the entity index, on vectors built by hand; and the two index stages on a lake."""

import logging

import numpy as np
import pyarrow as pa
import pytest

from pipeline import catalog
from pipeline.errors import MELUserError
from pipeline.index import (
    EntityIndex,
    IndexSettings,
    ItemVectors,
    build_entity_index,
    find_candidates,
    find_mention_candidates,
    update_entity_index,
)
from pipeline.index.candidates import recall_by_split, recall_curves
from pipeline.index.vectors import TEXT_NOT_FINITE
from pipeline.ingest import MENTIONS_SCHEMA
from pipeline.lake import Lake
from synthetic.stores import SyntheticWorld, build_synthetic_lake
from tests.test_entity_index import ENCODER, random_items


# -- mention candidates ----------------------------------------------------------------------

def write_mentions(lake, rows):
    """rows: (mention_id, split, gold_index or None)."""
    records = [{"mention_id": mention_id, "split": split, "gold_index": gold, "is_nil": gold is None,
                "gold_qid": None if gold is None else f"Q{gold}", "mention": "m", "sentence": "s", "has_image": False}
               for mention_id, split, gold in rows]
    lake.write_table(catalog.MENTIONS, pa.Table.from_pylist(records, schema=MENTIONS_SCHEMA), fingerprint="mentions-v1")


def candidates(lake, index, mentions, k=100):
    """mention_candidates from an index and query vectors built by hand."""
    return find_candidates(lake, index, mentions, IndexSettings(candidates_per_mention=k),
                           table_name=catalog.MENTION_CANDIDATES)


def candidates_table(lake):
    return lake.read_table(catalog.MENTION_CANDIDATES)


def mentions_near(entities, golds, mention_ids, noise=0.05, seed=3):
    """Mention vectors close to their gold entity's (a far-away vector where gold is None)."""
    rng = np.random.default_rng(seed)
    rows = [g if g is not None else 0 for g in golds]
    text = np.asarray(entities.text[rows], np.float32) + noise * rng.standard_normal((len(rows), entities.dim))
    image = np.asarray(entities.image[rows], np.float32) + noise * rng.standard_normal((len(rows), entities.dim))
    return ItemVectors(np.asarray(mention_ids), text.astype(np.float16), image.astype(np.float16),
                       np.ones(len(rows), bool), ENCODER, "mentions-store-v1", "mention store")


@pytest.fixture
def indexed(tmp_path):
    entities = random_items(200, dim=32)
    update_entity_index(entities, tmp_path / "index", IndexSettings())
    return entities, EntityIndex.load(tmp_path / "index")


def test_candidates_rank_the_gold_and_report_recall_per_split(lake, indexed):
    entities, index = indexed
    write_mentions(lake, [("train:1", "train", 10), ("train:2", "train", 20), ("test:1", "test", 30),
                          ("test:2", "test", 40), ("test:nil", "test", None), ("test:lost", "test", 50)])
    mentions = mentions_near(entities, [10, 20, 30, 40, None], ["train:1", "train:2", "test:1", "test:2", "test:nil"])
    mentions.text[3], mentions.image[3] = -entities.text[40], -entities.image[40]  # test:2 is unlike its gold
    # test:lost has no row in the feature store.

    report = candidates(lake, index, mentions, k=5)
    table = {row["mention_id"]: row for row in candidates_table(lake).to_pylist()}

    assert [table[m]["gold_rank"] for m in ("train:1", "train:2", "test:1")] == [1, 1, 1]
    assert table["train:1"]["candidates"][0] == 10 and len(table["train:1"]["candidates"]) == 5
    assert table["train:1"]["scores"] == sorted(table["train:1"]["scores"], reverse=True)
    assert table["test:2"]["gold_rank"] is None and len(table["test:2"]["candidates"]) == 5
    assert table["test:nil"]["gold_rank"] is None and table["test:nil"]["gold_index"] is None
    assert len(table["test:nil"]["candidates"]) == 5  # nil mentions are searched too
    assert table["test:lost"]["candidates"] == []
    assert "no row in the mention feature store" in table["test:lost"]["problem"]
    recall = report.stats["recall"]
    assert recall["train"] == {"mentions_with_gold": 2, "recall@1": 1.0, "recall@5": 1.0}
    assert recall["test"] == {"mentions_with_gold": 3, "recall@1": 1 / 3, "recall@5": 1 / 3}


def test_the_recall_curve_gives_recall_at_every_k_over_the_same_mentions():
    table = pa.table({"split": ["dev", "dev", "dev", "dev", "test"], "gold_index": [1, 2, 3, None, 4],
                      "gold_rank": pa.array([1, 3, None, None, 2], pa.int32())})  # dev: a miss and a nil

    curves = recall_curves(table, k=4)

    assert curves["dev"].tolist() == [1 / 3, 1 / 3, 2 / 3, 2 / 3]  # nil left out, the miss counts
    assert curves["test"].tolist() == [0.0, 1.0, 1.0, 1.0]
    assert recall_by_split(table, 4)["dev"]["recall@4"] == curves["dev"][-1]


def test_a_broken_mention_vector_gets_a_problem_row_and_counts_as_a_miss(lake, indexed):
    entities, index = indexed
    write_mentions(lake, [("dev:1", "dev", 1), ("dev:2", "dev", 2)])
    mentions = mentions_near(entities, [1, 2], ["dev:1", "dev:2"])
    mentions.text[1] = np.nan

    report = candidates(lake, index, mentions, k=10)
    broken = candidates_table(lake).to_pylist()[1]

    assert broken["candidates"] == [] and broken["problem"] == TEXT_NOT_FINITE
    assert report.stats["recall"]["dev"]["recall@1"] == 0.5
    assert report.stats["problems"] == {TEXT_NOT_FINITE: 1}


def test_candidates_per_mention_is_clamped_to_the_kb_size(lake, indexed):
    entities, index = indexed
    write_mentions(lake, [("dev:1", "dev", 1)])

    report = candidates(lake, index, mentions_near(entities, [1], ["dev:1"]), k=1000)

    assert report.stats["k"] == 200
    assert len(candidates_table(lake)["candidates"][0]) == 200
    assert set(report.stats["recall"]["dev"]) == {"mentions_with_gold", "recall@1", "recall@10", "recall@50",
                                                  "recall@100", "recall@200"}


def test_unchanged_inputs_reuse_the_candidates_table(lake, indexed):
    entities, index = indexed
    write_mentions(lake, [("dev:1", "dev", 1)])
    mentions = mentions_near(entities, [1], ["dev:1"])

    first = candidates(lake, index, mentions, k=10)
    second = candidates(lake, index, mentions, k=10)
    other_k = candidates(lake, index, mentions, k=20)

    assert (first.reused, second.reused, other_k.reused) == (False, True, False)
    assert second.stats["recall"] == first.stats["recall"]
    assert second.curves["dev"].tolist() == first.curves["dev"].tolist()  # read back from the kept table


def test_mentions_from_another_encoder_are_refused(lake, indexed):
    entities, index = indexed
    write_mentions(lake, [("dev:1", "dev", 1)])
    mentions = mentions_near(entities, [1], ["dev:1"])
    mentions.encoder = {"architecture": "ViT-B-32", "weights": "openai"}

    with pytest.raises(MELUserError, match="mention features at mention store were written by encoder "
                                           "architecture=ViT-B-32, weights=openai"):
        candidates(lake, index, mentions)


def test_a_missing_mentions_table_is_a_user_error(lake, indexed):
    entities, index = indexed
    with pytest.raises(MELUserError, match="The mentions table is missing"):
        candidates(lake, index, mentions_near(entities, [1], ["dev:1"]))


# -- the stages ------------------------------------------------------------------------------

def test_the_stages_read_and_write_the_lakes_artifacts_and_report_the_table(tmp_path):
    lake = build_synthetic_lake(Lake(tmp_path), SyntheticWorld())  # runs both stages once
    settings = IndexSettings(use_gpu="never", candidates_per_mention=20)
    logger = logging.getLogger("test")

    index = build_entity_index(lake, settings, logger=logger)
    report = find_mention_candidates(lake, settings, logger=logger)

    assert index.action == "unchanged" and index.directory == str(catalog.entity_index_dir(lake))
    assert report.reused and report.table.name == catalog.MENTION_CANDIDATES
    assert report.table.num_rows == lake.stored_table(catalog.MENTIONS).num_rows
    assert report.table.fingerprint == report.fingerprint and report.stats["k"] == 20
    assert set(report.curves) == {"train", "dev", "test"} and len(report.curves["test"]) == 20
