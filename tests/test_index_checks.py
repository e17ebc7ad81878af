"""The retrieval stage's asset checks, run through Dagster with hand-made feature stores (see World)."""

import dagster as dg
import numpy as np
import pytest

from assets import index
from assets.index import IndexResource
from pipeline import catalog
from tests.test_index_assets import (
    ENCODER,
    GOLD,
    INDEX_ASSETS,
    World,
    resources,
    write_store,
)

CHECKS = [index.index_matches_features, index.candidate_recall_floor]
FEATURES = [dg.AssetSpec(catalog.ENTITY_FEATURES), dg.AssetSpec(catalog.MENTION_FEATURES)]  # written outside the runs


def build(world, instance, index_resource=None):
    """Materialize the index and the candidates, their checks included (as the UI does)."""
    result = dg.materialize([*FEATURES, *INDEX_ASSETS, *CHECKS], selection=[*INDEX_ASSETS], instance=instance,
                            resources=resources(world.lake.root, index_resource=index_resource),
                            raise_on_error=False)
    return result, evaluations(result)


def check_only(world, instance, check):
    result = dg.materialize([*FEATURES, *INDEX_ASSETS, check], selection=dg.AssetSelection.checks(check),
                            instance=instance, resources=resources(world.lake.root), raise_on_error=False)
    return evaluations(result)[check.check_key.name]


def evaluations(result):
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


@pytest.fixture
def world(dataset, lake):
    return World.written(dataset, lake)


def test_a_fresh_index_matches_its_features_and_recall_is_above_the_floor(world, instance):
    result, checks = build(world, instance)

    assert result.success
    matches = checks["index_matches_features"]
    assert matches.passed and matches.severity == dg.AssetCheckSeverity.ERROR
    assert matches.metadata["encoders"].value == {"index": ENCODER, "entity_features": ENCODER,
                                                  "mention_features": ENCODER}
    assert (matches.metadata["usable_entities"].value, matches.metadata["indexed_entities"].value) == (10, 10)
    recall = checks["candidate_recall_floor"]
    assert recall.passed and recall.metadata["cutoff"].value == 10  # K = 10 entities < 100
    assert recall.metadata["recall@10/test"].value == 1.0 and recall.metadata["min_recall"].value == 0.5


def test_mention_features_from_another_encoder_fail_the_index_check(world, instance):
    build(world, instance)
    world.write_mentions(encoder={"arch": "ViT-B-32", "weights": "pretrained:openai"})

    check = check_only(world, instance, index.index_matches_features)

    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["encoders"].value["mention_features"] == {"arch": "ViT-B-32",
                                                                    "weights": "pretrained:openai"}
    assert "mention_features at" in check.description
    assert "come from encoder arch=ViT-B-32, weights=pretrained:openai" in check.description


def test_an_index_that_lags_behind_the_entity_store_fails_naming_the_entities(world, instance):
    build(world, instance)
    world.text = np.concatenate([world.text, world.text[:1] * -1])  # KB index 10: new since the index was built
    world.image = np.concatenate([world.image, world.image[:1]])
    world.has_image = np.append(world.has_image, True)
    world.text[3] *= -1  # KB index 3: re-described
    world.write_entities()

    check = check_only(world, instance, index.index_matches_features)

    assert not check.passed
    assert (check.metadata["missing_entities"].value, check.metadata["outdated_entities"].value) == (1, 1)
    assert "1 usable entities are not in the index (KB indices 10)" in check.description
    assert "(KB indices 3)" in check.description


def test_candidates_that_miss_the_gold_fail_the_recall_floor(world, instance):
    wrong = [(gold + 1) % 10 for gold in GOLD.values()]  # every mention looks like the next entity
    write_store(world.lake, catalog.MENTION_FEATURES, list(GOLD), world.text[wrong], world.image[wrong],
                [True, True, False])

    result, checks = build(world, instance, index_resource=IndexResource(candidates_per_mention=1))

    failed = checks["candidate_recall_floor"]
    assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR
    assert failed.metadata["cutoff"].value == 1  # K = 1 < 100: recall@K is compared
    assert failed.metadata["splits_below"].value == "dev, test, train"
    assert "recall@1 below the floor 0.5 on dev, test, train" in failed.description
    assert not result.success  # blocking: the run fails loudly


def test_before_mention_features_exist_the_entity_side_is_still_checked(dataset, lake, instance):
    world = World(dataset, lake)
    world.write_entities()
    dg.materialize([*FEATURES, index.entity_index], selection=[index.entity_index], instance=instance,
                   resources=resources(lake.root))

    check = check_only(world, instance, index.index_matches_features)

    assert check.passed and check.metadata["encoders"].value["mention_features"] is None
    assert "(mention_features: none yet)" in check.description
