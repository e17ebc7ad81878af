"""The training loop: it learns, it stops on NaN, its checkpoints resume to the same result, it is reused."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model import MMoEMatcher, load_checkpoint, ranking_metrics
from pipeline import catalog
from pipeline.errors import MELUserError
from pipeline.features.store import FeatureStore
from pipeline.lake import Lake
from pipeline.training.data import Inputs
from pipeline.training.scoring import rank_mentions
from pipeline.training.train import train_mmoe, train_model
from pipeline.training.trained import current_model
from pipeline.training.trainer import NonFiniteLoss
from synthetic.stores import SyntheticWorld, append_mentions, build_synthetic_lake, index_candidates, rewrite_store
from tests.conftest import SMALL_TRAINING as SMALL
from tests.conftest import train_into

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def lake(synthetic_lake) -> Lake:
    return synthetic_lake


def train_mrr(matcher, inputs) -> float:
    positions = inputs.mentions.select("train")
    ranking = rank_mentions(matcher, inputs.mentions, inputs.mentions_store, inputs.entities, positions,
                            torch.device("cpu"), rerank_k=20)
    return ranking_metrics(ranking.gold_rank)["mrr"]


def test_training_lowers_the_loss_and_ranks_train_mentions_better(lake, tmp_path):
    inputs = Inputs.open(lake)
    settings = SMALL.replace(epochs=5, patience=0)
    torch.manual_seed(settings.seed)
    untrained = MMoEMatcher(settings.model_config(inputs.dims))

    report = train_model(inputs, settings, tmp_path)

    losses = [epoch["loss"] for epoch in report.history]
    assert len(losses) == 5 and losses[-1] < 0.8 * losses[0]
    trained = load_checkpoint(report.checkpoint).model
    assert train_mrr(trained, inputs) > train_mrr(untrained, inputs) + 0.03
    assert report.best_dev["mrr"] == max(epoch["dev_mrr"] for epoch in report.history)
    assert report.left_out["nil"] > 0 and report.train_mentions > 0


def test_a_crashed_run_resumes_after_its_last_epoch_and_ends_where_an_uninterrupted_run_ends(lake, tmp_path):
    settings = SMALL.replace(patience=0)
    uninterrupted = train_into(lake, settings, tmp_path / "a")

    def crash(epoch):
        if epoch == 1:
            raise KeyboardInterrupt("simulated crash after epoch 1")

    with pytest.raises(KeyboardInterrupt):
        train_into(lake, settings, tmp_path / "b", after_epoch=crash)
    resumed = train_into(lake, settings, tmp_path / "b")

    assert resumed.resumed_from_epoch == 1 and not resumed.reused
    assert [e["dev_mrr"] for e in resumed.history] == [e["dev_mrr"] for e in uninterrupted.history]
    assert [e["loss"] for e in resumed.history] == [e["loss"] for e in uninterrupted.history]
    expected = load_file(f"{uninterrupted.checkpoint}/model.safetensors")
    actual = load_file(f"{resumed.checkpoint}/model.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_checkpoints_are_safetensors_and_json_and_only_the_last_and_best_epochs_stay(lake, tmp_path):
    report = train_into(lake, SMALL.replace(patience=0), tmp_path)
    run = tmp_path / report.fingerprint[:20]
    files = {path.name for path in run.rglob("*") if path.is_file()}
    assert files == {"training.json", "model.safetensors", "config.json", "optimizer.safetensors", "optimizer.json",
                     "rounds.json"}
    kept = sorted(path.name for path in (run / "epochs").iterdir())
    assert kept == [f"epoch-{report.best_epoch:04d}"]  # a finished run keeps its best epoch only
    state = json.loads((run / "training.json").read_text())
    assert state["finished"] and state["best"] == kept[0]


def test_an_unchanged_run_is_reused_and_a_changed_setting_trains_anew(lake, tmp_path):
    settings = SMALL.replace(epochs=1)
    first = train_into(lake, settings, tmp_path)
    again = train_into(lake, settings.replace(rerank_k=10, eval_batch_size=7), tmp_path)
    changed = train_into(lake, settings.replace(hard_negatives=1), tmp_path)

    assert again.reused and again.checkpoint == first.checkpoint
    assert not changed.reused and changed.fingerprint != first.fingerprint


def test_new_test_mentions_reuse_the_run_and_a_changed_train_mention_retrains(tmp_path):
    lake = build_synthetic_lake(Lake(tmp_path / "lake"))
    settings = SMALL.replace(epochs=1)
    first = train_into(lake, settings, tmp_path / "runs")
    before = Inputs.open(lake).fingerprints()

    append_mentions(lake, split="test", count=24)  # new rows in mentions, the mention store and candidates
    after_new_test_mentions = train_into(lake, settings, tmp_path / "runs")

    changed = {name for name, value in Inputs.open(lake).fingerprints().items() if before[name] != value}
    assert changed == {"mentions", "mention_store", "mention_candidates"}  # every table training opens changed
    assert after_new_test_mentions.reused and after_new_test_mentions.fingerprint == first.fingerprint

    train_row = FeatureStore.open(catalog.mention_store_dir(lake)).row_of("train:0")[0]

    def nudge(features):
        features.text_embeds[train_row] += 1
    rewrite_store(catalog.mention_store_dir(lake), nudge)
    after_changed_train_mention = train_into(lake, settings, tmp_path / "runs")

    assert not after_changed_train_mention.reused and after_changed_train_mention.fingerprint != first.fingerprint


def nudge_row(row: int):
    def edit(features):
        features.image_tokens[row] += 1  # a new content key; the pooled vectors, hence the candidates, stay
    return edit


def test_a_kb_entity_that_no_train_or_dev_mention_reads_does_not_retrain(tmp_path):
    world = SyntheticWorld(top_k=2)  # few candidates per mention: some entities are no train/dev mention's either
    lake = build_synthetic_lake(Lake(tmp_path / "lake"), world)
    mentions = Inputs.open(lake).mentions
    trained_on = np.flatnonzero(mentions.split != "test")
    read = set(mentions.gold_row[trained_on].tolist()) | {row for p in trained_on.tolist()
                                                          for row in mentions.candidates[p].tolist()}
    unread = min(set(range(world.entities)) - read)
    settings = SMALL.replace(epochs=1)
    first = train_into(lake, settings, tmp_path / "runs")

    rewrite_store(catalog.entity_store_dir(lake), nudge_row(unread))
    index_candidates(lake, world.top_k)
    after_unread_entity = train_into(lake, settings, tmp_path / "runs")
    rewrite_store(catalog.entity_store_dir(lake), nudge_row(min(read)))
    index_candidates(lake, world.top_k)
    after_read_entity = train_into(lake, settings, tmp_path / "runs")

    assert after_unread_entity.reused and after_unread_entity.fingerprint == first.fingerprint
    assert not after_read_entity.reused


def test_the_lake_records_the_current_model_for_evaluation(tmp_path):
    lake = build_synthetic_lake(Lake(tmp_path))
    with pytest.raises(MELUserError, match="materialize mmoe_model first"):
        current_model(lake)
    report = train_mmoe(lake, SMALL.replace(epochs=1))
    assert current_model(lake)["checkpoint"] == report.checkpoint


def test_a_nan_loss_stops_training_with_epoch_step_and_mention_ids(lake, tmp_path):
    explosive = SMALL.replace(lr=1e30)  # AdamW steps of ~1e30 overflow the next forward pass
    with pytest.raises(NonFiniteLoss, match=r"at epoch 1, step \d+ \(batch mention ids \['train:\d+'"):
        train_into(lake, explosive, tmp_path)
    assert not any((tmp_path).rglob("model.safetensors")), "nothing was checkpointed from the broken epoch"


def test_an_empty_dev_split_is_a_clear_error(tmp_path):
    lake = build_synthetic_lake(Lake(tmp_path), SyntheticWorld(mentions={"train": 40, "dev": 0, "test": 10}))
    with pytest.raises(MELUserError, match="The dev split has no linkable"):
        train_into(lake, SMALL, tmp_path / "runs")


def test_reference_gate_trains_when_text_and_image_token_counts_match(lake, tmp_path):
    with pytest.raises(MELUserError, match="needs as many text token states as image tokens"):
        train_into(lake, SMALL.replace(gate_mode="reference"), tmp_path)
    dims = {"D": 16, "L": 5, "Wt": 16, "P1": 5, "Wv": 12}
    matching = build_synthetic_lake(Lake(tmp_path / "matching"), SyntheticWorld(dims=dims))

    report = train_into(matching, SMALL.replace(gate_mode="reference", epochs=1, rerank_k=5), tmp_path)

    assert report.config["gate_mode"] == "reference" and report.config["aux_loss_weight"] == 0
    assert np.isfinite(report.history[0]["loss"]) and 0 < report.best_dev["mrr"] <= 1
