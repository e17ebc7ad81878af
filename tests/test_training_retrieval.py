"""Trained candidate retrieval on a synthetic lake: the trained index ranks by the matcher's separable score,
a new entity is encoded and added without retraining, another model's index is refused, NaN items are left
out and reported, and training rounds mine their candidates from the trained index."""

import numpy as np
import pytest
import torch

from model import load_checkpoint
from pipeline import catalog
from pipeline.errors import MELUserError
from pipeline.features.store import FeatureStore
from pipeline.index import EntityIndex, IndexSettings
from pipeline.lake import Lake
from pipeline.training.evaluate import evaluate_mmoe
from pipeline.training.retrieval import build_retrieval_index, encode_vectors, find_retrieval_candidates
from pipeline.training.train import train_mmoe
from pipeline.training.trained import current_model, model_identity
from synthetic.stores import build_synthetic_lake, read_all, rewrite_store, write_store
from tests.conftest import SMALL_TRAINING as SMALL
from tests.conftest import train_into

CPU = torch.device("cpu")
INDEX = IndexSettings(use_gpu="never", candidates_per_mention=20)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Lake:
    """A synthetic lake with a model trained for one round."""
    lake = build_synthetic_lake(Lake(tmp_path_factory.mktemp("lake")))
    train_mmoe(lake, SMALL.replace(epochs=3, retrieval_rounds=1))
    return lake


def test_the_trained_index_returns_the_top_k_of_the_separable_score(trained):
    model = current_model(trained)
    report = build_retrieval_index(trained, INDEX, device=CPU)
    mentions = FeatureStore.open(catalog.mention_store_dir(trained))
    candidates = find_retrieval_candidates(trained, INDEX, device=CPU)

    entities = FeatureStore.open(catalog.entity_store_dir(trained))
    assert report.index.action == "built" and report.encoded == len(entities) == report.index.entities
    matcher = load_checkpoint(model["checkpoint"]).model.eval()
    entity_vectors, _ = encode_vectors(matcher, entities, np.arange(len(entities)), CPU, is_entity=True)
    mention_vectors, _ = encode_vectors(matcher, mentions, np.arange(len(mentions)), CPU, is_entity=False)
    exact = np.argsort(-(mention_vectors @ entity_vectors.T), axis=1, kind="stable")[:, :20]
    table = trained.read_table(catalog.RETRIEVAL_CANDIDATES).to_pylist()
    row_of = {mention_id: row for row, mention_id in enumerate(mentions.ids.tolist())}
    kb = entities.ids.astype(np.int64)
    for row in table[:10]:  # an exact index: the same top 20 as scoring every entity by hand
        assert row["candidates"] == kb[exact[row_of[row["mention_id"]]]].tolist()
    gold = {row["mention_id"]: row["gold_index"] for row in table
            if row["split"] == "test" and row["gold_index"] is not None}
    found = sum(gold[row["mention_id"]] in row["candidates"][:10] for row in table if row["mention_id"] in gold)
    assert candidates.stats["recall"]["test"]["recall@10"] == found / len(gold)


def test_a_new_entity_is_encoded_and_added_in_place_without_retraining(trained, tmp_path):
    model = current_model(trained)
    store = FeatureStore.open(catalog.entity_store_dir(trained))
    every_entity = read_all(store)
    ids, encoder, recipe = store.ids.tolist(), store.encoder, store.recipe
    rewrite_store(catalog.entity_store_dir(trained), drop=("7",))
    without = build_retrieval_index(trained, INDEX, device=CPU)
    write_store(catalog.entity_store_dir(trained), ids, iter([every_entity]), encoder, recipe)  # entity 7 arrives

    added = build_retrieval_index(trained, INDEX, device=CPU)

    assert without.index.entities == len(ids) - 1
    assert added.index.action == "synced" and added.encoded == 1
    assert (added.index.counts.added, added.index.counts.unchanged) == (1, len(ids) - 1)
    assert current_model(trained)["fingerprint"] == model["fingerprint"]  # no retraining
    index = EntityIndex.load(catalog.retrieval_index_dir(trained))
    matcher = load_checkpoint(model["checkpoint"]).model.eval()
    vector, _ = encode_vectors(matcher, FeatureStore.open(catalog.entity_store_dir(trained)), np.array([7]), CPU, True)
    np.testing.assert_allclose(index.index.reconstruct(7), vector[0], rtol=1e-5, atol=1e-6)


def test_another_models_index_is_refused_naming_both(trained, tmp_path):
    lake = Lake(tmp_path / "lake")
    build_synthetic_lake(lake)
    first = train_mmoe(lake, SMALL.replace(epochs=1, retrieval_rounds=1)).as_dict()
    build_retrieval_index(lake, INDEX, device=CPU)
    second = train_mmoe(lake, SMALL.replace(epochs=1, retrieval_rounds=1, seed=1)).as_dict()

    with pytest.raises(MELUserError) as refused:
        find_retrieval_candidates(lake, INDEX, device=CPU)
    message = str(refused.value)
    assert model_identity(first)[:12] in message and model_identity(second)[:12] in message
    assert "re-materialize retrieval_index" in message


def test_entities_and_mentions_with_nan_features_are_reported_and_left_out(tmp_path):
    lake = build_synthetic_lake(Lake(tmp_path / "lake"))
    train_mmoe(lake, SMALL.replace(epochs=1, retrieval_rounds=1))
    test_mention = next(row["mention_id"] for row in lake.read_table(catalog.MENTIONS).to_pylist()
                        if row["split"] == "test")
    mention_row = FeatureStore.open(catalog.mention_store_dir(lake)).ids.tolist().index(test_mention)

    def poison_entity(features):
        features.text_embeds[4] = np.nan

    def poison_mention(features):
        features.image_embeds[mention_row] = np.inf

    rewrite_store(catalog.entity_store_dir(lake), poison_entity)
    rewrite_store(catalog.mention_store_dir(lake), poison_mention)
    report = build_retrieval_index(lake, INDEX, device=CPU)
    find_retrieval_candidates(lake, INDEX, device=CPU)

    [problem] = report.index.problems
    assert problem["kb_index"] == 4 and problem["action"] == "excluded" and "NaN/Inf" in problem["problem"]
    assert 4 not in EntityIndex.load(catalog.retrieval_index_dir(lake)).keys
    rows = {row["mention_id"]: row for row in lake.read_table(catalog.RETRIEVAL_CANDIDATES).to_pylist()}
    assert rows[test_mention]["candidates"] == [] and "NaN/Inf" in rows[test_mention]["problem"]
    assert all(4 not in row["candidates"] for row in rows.values())


def test_round_two_mines_the_trained_index_and_the_best_round_is_the_model(tmp_path):
    lake = build_synthetic_lake(Lake(tmp_path / "lake"))
    report = train_into(lake, SMALL.replace(epochs=2, retrieval_rounds=2), tmp_path / "runs")
    again = train_into(lake, SMALL.replace(epochs=2, retrieval_rounds=2), tmp_path / "runs")

    first, *later = report.rounds
    assert first["round"] == 1 and len(later) == 1 and later[0]["round"] == 2
    assert all(0 < r["dev_recall"] <= 1 and 0 < r["dev_mrr"] <= 1 for r in report.rounds)
    best = max(report.rounds, key=lambda r: (r["dev_mrr"], -r["round"]))
    assert report.round == best["round"]
    assert ("round-2" in report.checkpoint) == (report.round == 2)
    assert again.reused and again.checkpoint == report.checkpoint and again.rounds == report.rounds


def test_evaluation_reports_the_trained_and_the_zero_shot_index_side_by_side(trained):
    build_retrieval_index(trained, INDEX, device=CPU)
    find_retrieval_candidates(trained, INDEX, device=CPU)

    report = evaluate_mmoe(trained, SMALL.replace(full_kb=True))

    test = {row["scoring"]: row for row in report.metrics if row["split"] == "test"}
    assert set(test) == {"rerank@20", "zero_shot_rerank@20", "full_kb"}
    recall = {row["index"]: row for row in report.retrieval if row["split"] == "test"}
    assert set(recall) == {"trained", "zero-shot CLIP"}
    for index, table in (("trained", catalog.RETRIEVAL_CANDIDATES), ("zero-shot CLIP", catalog.MENTION_CANDIDATES)):
        assert recall[index]["recall@10"] == trained.table_extra(table)["recall"]["test"]["recall@10"]
    assert {row["scoring"] for row in report.timings} == set(test)
    assert all(row["ms_per_mention"] > 0 for row in report.timings)
    # every mention is counted in each mode; a miss is a mention whose gold its candidates lack
    misses = round((1 - recall["trained"]["recall@20"]) * recall["trained"]["mentions"])
    assert test["rerank@20"]["count"] == test["zero_shot_rerank@20"]["count"] == test["full_kb"]["count"]
    assert test["rerank@20"]["outside_top_k"] + test["rerank@20"]["unscored"] == misses


def test_mention_features_of_another_encoder_are_refused_naming_both(tmp_path):
    lake = build_synthetic_lake(Lake(tmp_path / "lake"))
    train_mmoe(lake, SMALL.replace(epochs=1, retrieval_rounds=1))
    build_retrieval_index(lake, INDEX, device=CPU)
    rewrite_store(catalog.mention_store_dir(lake), encoder={"arch": "ViT-B-32", "weights": "openai"})

    with pytest.raises(MELUserError) as refused:
        find_retrieval_candidates(lake, INDEX, device=CPU)
    message = str(refused.value)
    assert "arch=ViT-B-32" in message and "arch=synthetic" in message and "Traceback" not in message
