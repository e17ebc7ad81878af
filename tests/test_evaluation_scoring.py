"""Evaluation: reranking vs the full KB, the miss convention, unusable mentions, the predictions table,
zero-shot baselines and the histogram, on a synthetic lake written by the real writers."""

import json
import shutil

import numpy as np
import pytest
import torch

from model import MMoEMatcher, load_checkpoint
from pipeline import catalog
from pipeline.errors import MELUserError
from pipeline.features.store import FeatureStore
from pipeline.lake import Lake
from pipeline.training.baselines import zero_shot_ranks
from pipeline.training.data import Inputs, read_features
from pipeline.training.evaluate import evaluate_model
from pipeline.training.predictions import PREDICTIONS_SCHEMA
from pipeline.training.scoring import rank_mentions
from pipeline.training.summaries import rank_bins
from pipeline.training.train import train_mmoe
from synthetic.stores import SyntheticWorld, append_mentions, build_synthetic_lake, rewrite_store
from tests.conftest import SMALL_TRAINING as SMALL
from tests.conftest import train_into

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A lake whose FAISS candidates cover the whole KB (K = 60 entities), and a matcher trained on it."""
    lake = build_synthetic_lake(Lake(tmp_path_factory.mktemp("lake")), SyntheticWorld(top_k=60))
    report = train_mmoe(lake, SMALL)
    return lake, report


def ranks(lake, matcher, split="test", **kwargs):
    inputs = Inputs.open(lake)
    positions = inputs.mentions.select(split)
    return inputs, positions, rank_mentions(matcher, inputs.mentions, inputs.mentions_store, inputs.entities,
                                            positions, CPU, **kwargs)


def matcher_of(report) -> MMoEMatcher:
    return load_checkpoint(report.checkpoint).model.eval()


def test_reranking_scores_each_candidate_as_the_matcher_does(trained):
    lake, report = trained
    matcher = matcher_of(report)
    inputs, positions, ranking = ranks(lake, matcher, rerank_k=20)
    position = positions[0]
    candidates = inputs.mentions.candidates[position][:20]
    mention = read_features(inputs.mentions_store, inputs.mentions.mention_row[[position]], ["m"], CPU, False)
    entities = read_features(inputs.entities, candidates, candidates, CPU, False)
    with torch.no_grad():
        direct = matcher.score_candidates(mention, entities.map(lambda t: t.unsqueeze(0))).total[0]

    expected = direct.sort(descending=True)
    np.testing.assert_allclose(ranking.top_scores[0], expected.values[:10].numpy(), rtol=5e-3, atol=5e-3)
    assert ranking.top_rows[0][0] == candidates[expected.indices[0]]


def test_reranking_every_entity_ranks_like_scoring_the_full_kb(trained):
    lake, report = trained
    matcher = matcher_of(report)
    _, _, reranked = ranks(lake, matcher, rerank_k=60)
    _, _, full = ranks(lake, matcher, rerank_k=60, full_kb=True)

    assert full.scoring == "full_kb" and reranked.scoring == "rerank@60"
    assert (reranked.gold_rank == full.gold_rank).all()
    assert all((a == b).all() for a, b in zip(reranked.top_rows, full.top_rows))


def test_a_gold_outside_the_top_k_is_a_miss_at_k_plus_1_and_never_dropped(trained):
    lake, report = trained
    inputs, positions, ranking = ranks(lake, matcher_of(report), rerank_k=1)
    in_top_1 = np.array([inputs.mentions.candidates[p][0] == inputs.mentions.gold_row[p] for p in positions])

    assert len(ranking.gold_rank) == len(positions)
    assert (ranking.gold_rank[in_top_1] == 1).all() and (ranking.gold_rank[~in_top_1] == 2).all()
    assert (~in_top_1).any()


def test_full_kb_ranks_are_never_better_than_reranking_a_subset(trained):
    lake, report = trained
    matcher = matcher_of(report)
    _, _, reranked = ranks(lake, matcher, rerank_k=10)
    _, _, full = ranks(lake, matcher, rerank_k=10, full_kb=True)
    inside = reranked.gold_rank <= 10
    assert (reranked.gold_rank[inside] <= full.gold_rank[inside]).all()


def test_evaluation_writes_predictions_metrics_baselines_and_histogram(trained):
    lake, report = trained
    result = evaluate_model(lake, SMALL.replace(full_kb=True), report.as_dict())

    table = lake.read_table(catalog.PREDICTIONS)
    assert table.schema.remove_metadata() == PREDICTIONS_SCHEMA
    mentions = Inputs.open(lake).mentions
    dev_and_test = int(np.isin(mentions.split, ["dev", "test"]).sum())
    assert table.num_rows == 2 * dev_and_test  # one row per mention and scoring mode, nil mentions included
    rows = table.to_pylist()
    nil = [row for row in rows if row["is_nil"]]
    assert nil and all(row["gold_rank"] is None and len(row["top_entities"]) == 10 for row in nil)
    routing = json.loads(rows[0]["routing"])
    assert set(routing) == {"text", "image", "cross_text_image", "cross_image_text"}
    assert len(routing["text"]["class_experts"]) == 3
    assert all(len(row["top_text_scores"]) == len(row["top_entities"]) for row in rows)

    test = [row for row in result.metrics if row["split"] == "test"]
    assert [row["scoring"] for row in test] == ["rerank@20", "full_kb"]
    assert test[0]["count"] == int(((mentions.split == "test") & ~mentions.is_nil).sum())
    assert {row["modality"] for row in result.baselines} == {"text", "image", "both"}
    assert result.histogram_png()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [row["method"] for row in result.comparison()][:2] == ["MMoE (rerank@20)", "MMoE (full_kb)"]


def test_an_unchanged_evaluation_is_reused(trained):
    lake, report = trained
    first = evaluate_model(lake, SMALL, report.as_dict())
    second = evaluate_model(lake, SMALL, report.as_dict())
    assert second.reused and second.metrics == first.metrics


def predictions_by_mention(lake) -> dict:
    return {(row["mention_id"], row["scoring"]): (row["gold_rank"], row["top_entities"])
            for row in lake.read_table(catalog.PREDICTIONS).to_pylist()}


def test_after_new_test_mentions_only_they_are_ranked_and_the_metrics_equal_a_fresh_evaluation(tmp_path):
    lake = build_synthetic_lake(Lake(tmp_path / "lake"))
    settings = SMALL.replace(full_kb=True)
    model = train_into(lake, settings.replace(epochs=1), tmp_path / "runs").as_dict()
    first = evaluate_model(lake, settings, model)
    new_ids = append_mentions(lake, split="test", count=24)
    fresh = Lake(tmp_path / "fresh")
    shutil.copytree(lake.root, fresh.root)
    fresh.table_path(catalog.PREDICTIONS).unlink()  # the fresh copy evaluates from scratch

    incremental = evaluate_model(lake, settings, model)
    from_scratch = evaluate_model(fresh, settings, model)

    assert (first.mentions_ranked, first.mentions_reused) == (48, 0)
    assert (incremental.mentions_ranked, incremental.mentions_reused) == (len(new_ids), 48)
    assert (from_scratch.mentions_ranked, from_scratch.mentions_reused) == (72, 0)
    assert incremental.metrics == from_scratch.metrics and incremental.baselines == from_scratch.baselines
    assert predictions_by_mention(lake) == predictions_by_mention(fresh)
    linkable_test = len(Inputs.open(lake).mentions.select("test"))
    assert next(row for row in incremental.metrics if row["split"] == "test")["count"] == linkable_test


def test_a_changed_mention_is_ranked_again_and_the_others_are_reused(tmp_path):
    lake = build_synthetic_lake(Lake(tmp_path / "lake"))
    model = train_into(lake, SMALL.replace(epochs=1), tmp_path / "runs").as_dict()
    evaluate_model(lake, SMALL, model)
    row = FeatureStore.open(catalog.mention_store_dir(lake)).row_of("test:3")[0]

    def nudge(features):
        features.text_embeds[row] += 1
    rewrite_store(catalog.mention_store_dir(lake), nudge)
    again = evaluate_model(lake, SMALL, model)

    assert not again.reused and (again.mentions_ranked, again.mentions_reused) == (1, 47)


def test_zero_shot_ranks_match_a_brute_force_cosine(trained):
    lake, _ = trained
    inputs = Inputs.open(lake)
    positions = inputs.mentions.select("test")
    text = np.asarray(inputs.entities.pooled("text"), np.float64)
    text /= np.linalg.norm(text, axis=1, keepdims=True)

    found = zero_shot_ranks(inputs.entities, inputs.mentions_store, inputs.mentions, positions, "text")

    for position, rank in zip(positions, found):
        query = np.asarray(inputs.mentions_store.pooled("text")[inputs.mentions.mention_row[position]], np.float64)
        similarity = text @ (query / np.linalg.norm(query))
        assert rank == int((similarity >= similarity[inputs.mentions.gold_row[position]] - 1e-6).sum())


def test_unusable_mentions_become_failure_rows_and_misses(tmp_path):
    lake = build_synthetic_lake(Lake(tmp_path))
    kept = [i for i in FeatureStore.open(catalog.mention_store_dir(lake)).ids.tolist() if i != "test:0"]

    def poison(features):
        features.image_tokens[kept.index("test:1"), 0, 0] = np.inf
    rewrite_store(catalog.mention_store_dir(lake), poison, drop=("test:0",))
    report = train_into(lake, SMALL.replace(epochs=1), tmp_path / "runs")

    evaluate_model(lake, SMALL, report.as_dict())

    rows = {row["mention_id"]: row for row in lake.read_table(catalog.PREDICTIONS).to_pylist()}
    assert rows["test:0"]["problem"].startswith("no row in the mention feature store")
    assert rows["test:1"]["problem"] == "mention features: NaN/Inf in image_tokens"
    for mention_id in ("test:0", "test:1"):
        assert rows[mention_id]["gold_rank"] == SMALL.rerank_k + 1 and rows[mention_id]["top_entities"] == []
    metrics = lake.table_extra(catalog.PREDICTIONS)["metrics"]
    test = next(row for row in metrics if row["split"] == "test")
    assert test["unscored"] == 2


def test_a_checkpoint_from_another_configuration_names_the_field(trained):
    lake, report = trained
    with pytest.raises(MELUserError, match=r"vision_dim: checkpoint=8, expected=16.*re-materialize mmoe_model"):
        evaluate_model(lake, SMALL.replace(hidden_dim=16), report.as_dict(), write_predictions=False)


def test_a_model_trained_on_another_encoder_is_refused(trained):
    lake, report = trained
    other = {**report.as_dict(), "encoder": {"arch": "ViT-B-32", "weights": "pretrained:openai"}}
    with pytest.raises(MELUserError, match="trained on features of another encoder"):
        evaluate_model(lake, SMALL, other, write_predictions=False)


def test_an_empty_test_split_names_the_split(tmp_path):
    lake = build_synthetic_lake(Lake(tmp_path), SyntheticWorld(mentions={"train": 40, "dev": 10, "test": 0}))
    report = train_into(lake, SMALL.replace(epochs=1), tmp_path / "runs")
    with pytest.raises(MELUserError, match="The test split has no linkable"):
        evaluate_model(lake, SMALL, report.as_dict())


def test_reference_gate_ranks_with_the_public_chunking(tmp_path):
    dims = {"D": 16, "L": 5, "Wt": 16, "P1": 5, "Wv": 12}
    lake = build_synthetic_lake(Lake(tmp_path), SyntheticWorld(dims=dims, top_k=60))
    settings = SMALL.replace(gate_mode="reference", epochs=1, rerank_k=60)
    matcher = matcher_of(train_into(lake, settings, tmp_path / "runs"))

    _, positions, reranked = ranks(lake, matcher, rerank_k=60)
    _, _, full = ranks(lake, matcher, rerank_k=60, full_kb=True)

    for ranking in (reranked, full):
        assert len(ranking.gold_rank) == len(positions) and ((ranking.gold_rank >= 1) & (ranking.gold_rank <= 61)).all()
    # one mention against its 60 candidates vs 20 mentions against one 60-entity chunk: batch-dependent scores
    assert not all(np.allclose(a, b) for a, b in zip(reranked.top_scores, full.top_scores))


def test_rank_bins_cover_every_rank_up_to_a_miss():
    bins = rank_bins(100)
    assert bins[0] == ("1", 1, 1) and bins[-1] == ("> 100 (miss)", 101, 101)
    covered = [rank for _, low, high in bins for rank in range(low, high + 1)]
    assert covered == list(range(1, 102))
