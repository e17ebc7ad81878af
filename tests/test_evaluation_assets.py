"""The `mmoe_model` and `evaluation` assets, run through Dagster as the UI runs them, on a synthetic lake."""

import json

import dagster as dg
import pyarrow.parquet as pq
import pytest

from assets import retrieval, training
from assets.features import ClipResource
from assets.index import IndexResource
from assets.resources import LakeResource
from pipeline.lake import Lake
from synthetic.stores import build_synthetic_lake
from tests.conftest import metadata_of

SMALL = dict(hidden_dim=8, epochs=2, batch_size=16, rerank_k=20, lr=3e-3, device="cpu")


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def materialize(lake_root, instance, checks=(training.mmoe_beats_zero_shot,), **settings):
    return dg.materialize(
        [training.mmoe_model, retrieval.retrieval_index, retrieval.retrieval_candidates, training.evaluation, *checks],
        instance=instance,
        resources={"lake": LakeResource(root=str(lake_root)), "index": IndexResource(candidates_per_mention=20),
                   "training": training.TrainingResource(**{**SMALL, **settings})},
        raise_on_error=False,
    )


def test_training_and_evaluation_show_epochs_metrics_comparison_and_histogram(tmp_path):
    build_synthetic_lake(Lake(tmp_path))
    with dg.instance_for_test() as instance:
        first = materialize(tmp_path, instance)
        second = materialize(tmp_path, instance)

    assert first.success
    model = metadata_of(first, "mmoe_model")
    assert model["best_epoch"] in (1, 2) and 0 < model["dev_mrr"] <= 1
    assert "| epoch | loss |" in model["epochs"] and model["checkpoint"].endswith(f"epoch-000{model['best_epoch']}")
    assert model["reused_stored_model"] is False and model["parameters"] > 0

    evaluation = metadata_of(first, "evaluation")
    assert "![rank histogram](data:image/png;base64," in evaluation["rank_histogram"]
    assert "zero-shot CLIP (both)" in evaluation["comparison_test"] and "MMoE (rerank@20)" in evaluation["comparison_test"]
    assert 0 < evaluation["test/rerank@20/mrr"] <= 1 and evaluation["test/zero_shot_text/mrr"] > 0
    # every dev and test mention, nil ones included, reranked over the trained and over the zero-shot index
    assert evaluation["dagster/row_count"] == 2 * 48
    assert (evaluation["mentions_ranked"], evaluation["mentions_reused"]) == (48, 0)  # a first evaluation ranks all
    [check] = [e for e in first.get_asset_check_evaluations() if e.check_name == "mmoe_beats_zero_shot"]
    assert check.metadata["mmoe_test_mrr"].value == evaluation["test/rerank@20/mrr"]

    assert metadata_of(second, "mmoe_model")["reused_stored_model"] is True
    assert metadata_of(second, "evaluation")["reused_stored_output"] is True


def coverage_check(result):
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == "evaluation_covers_every_test_mention"]
    return check


def test_the_coverage_check_fails_naming_test_mentions_that_have_no_prediction(tmp_path):
    lake = build_synthetic_lake(Lake(tmp_path))
    checks = (training.evaluation_covers_every_test_mention,)
    with dg.instance_for_test() as instance:
        complete = materialize(tmp_path, instance, checks=checks)
        linkable_test = [row["mention_id"] for row in lake.read_table("mentions").to_pylist()
                         if row["split"] == "test" and not row["is_nil"]]
        lost = linkable_test[2:4]
        predictions = pq.read_table(lake.table_path("predictions"))  # a stale table: two test rows lost
        kept = [mention_id not in lost for mention_id in predictions.column("mention_id").to_pylist()]
        pq.write_table(predictions.filter(kept), lake.table_path("predictions"))
        stale = materialize(tmp_path, instance, checks=checks)

    passed = coverage_check(complete)
    assert passed.passed and passed.metadata["test_mentions"].value == len(linkable_test)
    assert passed.metadata["missing"].value == 0
    assert metadata_of(stale, "evaluation")["reused_stored_output"] is True  # the table's fingerprint still matches
    failed = coverage_check(stale)
    assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR
    assert failed.metadata["missing"].value == 2 and json.loads(failed.metadata["missing_examples"].value) == lost


def test_a_bad_setting_fails_with_one_sentence_naming_the_resource_field(tmp_path):
    with dg.instance_for_test() as instance:
        result = materialize(tmp_path, instance, preset="imagenet")
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "TrainingResource.preset 'imagenet' is not one of" in message and "Traceback" not in message


def test_the_assets_load_beside_the_upstream_stages():
    from assets import features, index

    defs = dg.Definitions(
        assets=[features.entity_features, features.mention_features, index.entity_index,
                index.mention_candidates, retrieval.retrieval_index, retrieval.retrieval_candidates,
                training.mmoe_model, training.evaluation],
        asset_checks=[training.mmoe_beats_zero_shot, training.evaluation_covers_every_test_mention],
        resources={"lake": LakeResource(), "clip": ClipResource(), "index": index.IndexResource(),
                   "training": training.TrainingResource()},
    )
    graph = defs.resolve_asset_graph()
    evaluation_key = dg.AssetKey("evaluation")
    assert dg.AssetKey("mmoe_model") in graph.get(evaluation_key).parent_keys
    assert graph.get(dg.AssetKey("mmoe_model")).parent_keys >= {
        dg.AssetKey(k) for k in ("entity_features", "mention_features", "mention_candidates", "mentions")}
