"""Training inputs: opening the stores and tables, consistency checks, batches with hard negatives.

The lake is synthetic but written by the real writers (feature store, Parquet tables, FAISS index and
candidate search): `synthetic.stores`."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline import catalog
from pipeline.errors import MELUserError
from pipeline.lake import Lake
from pipeline.training.batches import epoch_batches, train_set
from pipeline.training.data import Inputs, NonFiniteFeatures, read_features
from synthetic.stores import SyntheticWorld, build_synthetic_lake, rewrite_store

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def inputs(synthetic_lake) -> Inputs:
    return Inputs.open(synthetic_lake)


@pytest.fixture
def fresh_lake(tmp_path) -> Lake:
    return build_synthetic_lake(Lake(tmp_path / "lake"))


def test_every_mention_is_joined_with_its_store_rows_gold_and_candidates(inputs):
    mentions = inputs.mentions
    table = inputs.lake.read_table(catalog.MENTION_CANDIDATES).to_pylist()
    assert len(mentions.ids) == len(table) == 144
    first = table[0]
    position = list(mentions.ids).index(first["mention_id"])
    assert inputs.mentions_store.ids[mentions.mention_row[position]] == first["mention_id"]
    assert inputs.entities.ids[mentions.gold_row[position]] == str(first["gold_index"])
    assert inputs.entities.ids[mentions.candidates[position]].tolist() == [str(c) for c in first["candidates"]]
    assert (mentions.gold_row[mentions.is_nil] == -1).all()


def test_batches_hold_each_gold_once_and_target_it(inputs):
    data = train_set(inputs.mentions, pool_size=10)
    for batch in epoch_batches(data, batch_size=16, hard_negatives=3, seed=0, epoch=1):
        assert len(set(batch.entity_rows.tolist())) == len(batch.entity_rows), "columns are deduplicated"
        golds = inputs.mentions.gold_row[batch.positions]
        assert (batch.entity_rows[batch.targets] == golds).all()
        assert len(batch.entity_rows) <= len(batch.positions) * 4


def test_two_mentions_of_one_entity_share_its_column_and_never_see_it_as_a_negative(inputs):
    data = train_set(inputs.mentions, pool_size=10)
    shared = [b for b in epoch_batches(data, 32, 3, seed=0, epoch=1)
              if len(set(inputs.mentions.gold_row[b.positions].tolist())) < len(b.positions)]
    assert shared, "the synthetic world has popular entities"
    batch = shared[0]
    golds = inputs.mentions.gold_row[batch.positions]
    for gold in set(golds.tolist()):
        same = np.flatnonzero(golds == gold)
        if len(same) > 1:
            assert len(set(batch.targets[same].tolist())) == 1


def test_hard_negatives_come_from_the_candidates_and_exclude_the_gold(inputs):
    data = train_set(inputs.mentions, pool_size=5)
    for pool, gold in zip(data.negative_pools, data.gold_rows):
        assert gold not in pool and len(pool) <= 5
    batch = epoch_batches(data, 8, hard_negatives=3, seed=0, epoch=1)[0]
    golds = set(inputs.mentions.gold_row[batch.positions].tolist())
    allowed = golds.union(*(data.negative_pools[np.flatnonzero(data.positions == p)[0]].tolist()
                            for p in batch.positions))
    assert set(batch.entity_rows.tolist()) <= allowed
    assert len(batch.entity_rows) > len(golds)


def test_batches_depend_only_on_seed_and_epoch(inputs):
    data = train_set(inputs.mentions, pool_size=10)

    def draw(seed, epoch):
        return [(b.positions.tolist(), b.entity_rows.tolist()) for b in epoch_batches(data, 16, 3, seed, epoch)]

    assert draw(0, 2) == draw(0, 2)
    assert draw(0, 2) != draw(0, 3) and draw(0, 2) != draw(1, 2)


def test_nil_mentions_are_left_out_of_training_and_counted(inputs):
    data = train_set(inputs.mentions, pool_size=10)
    train = inputs.mentions.split == "train"
    assert data.left_out["nil"] == int((inputs.mentions.is_nil & train).sum()) > 0
    assert len(data) + data.left_out["nil"] == int(train.sum())


def test_text_padding_shared_by_the_whole_batch_is_trimmed(inputs):
    rows = np.arange(4)
    features = read_features(inputs.entities, rows, inputs.entities.ids[rows], torch.device("cpu"), reference=False)
    assert features.text_mask[:, -1].any() and features.text_tokens.dtype == torch.float32
    full = read_features(inputs.entities, rows, inputs.entities.ids[rows], torch.device("cpu"), reference=True)
    assert full.text_tokens.shape[1] == inputs.dims["L"] >= features.text_tokens.shape[1]


def test_a_nan_feature_row_stops_with_the_mention_id_and_tensor(fresh_lake):
    def poison(features):
        features.text_tokens[5, 0, 0] = np.nan
    rewrite_store(catalog.mention_store_dir(fresh_lake), poison)
    inputs = Inputs.open(fresh_lake)
    rows = np.arange(8)

    with pytest.raises(NonFiniteFeatures, match=r"train:5 \(NaN/Inf in text_tokens\)"):
        read_features(inputs.mentions_store, rows, inputs.mentions_store.ids[rows], torch.device("cpu"), False)


def test_a_mention_store_from_another_encoder_is_refused(fresh_lake):
    rewrite_store(catalog.mention_store_dir(fresh_lake), encoder={"arch": "ViT-B-32", "weights": "pretrained:openai"})
    with pytest.raises(MELUserError, match="mention feature store .* by ViT-B-32 .*arch: 'synthetic' vs 'ViT-B-32'"):
        Inputs.open(fresh_lake)


def test_an_index_built_from_another_encoder_is_refused(fresh_lake):
    other = {"arch": "ViT-L-14", "weights": "pretrained:openai"}
    for store in (catalog.entity_store_dir(fresh_lake), catalog.mention_store_dir(fresh_lake)):
        rewrite_store(store, encoder=other)
    with pytest.raises(MELUserError, match="entity index"):
        Inputs.open(fresh_lake)


def test_candidates_naming_entities_the_store_lacks_are_refused(fresh_lake):
    table = fresh_lake.read_table(catalog.MENTION_CANDIDATES)
    lists = table.column("candidates").to_pylist()
    lists[0] = [999] + lists[0][1:]
    table = table.set_column(table.schema.get_field_index("candidates"), "candidates",
                             pa.array(lists, pa.list_(pa.int64())))
    fresh_lake.write_table(catalog.MENTION_CANDIDATES, table, "edited")
    with pytest.raises(MELUserError, match=r"KB indices \[999\] for mention train:0"):
        Inputs.open(fresh_lake)


def test_an_empty_train_split_names_the_split(tmp_path):
    lake = build_synthetic_lake(Lake(tmp_path), SyntheticWorld(mentions={"train": 0, "dev": 10, "test": 10}))
    with pytest.raises(MELUserError, match="The train split has no mention to train on"):
        train_set(Inputs.open(lake).mentions, pool_size=10)
