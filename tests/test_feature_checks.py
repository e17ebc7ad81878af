"""The feature stores' asset checks, run through Dagster on stores written by the real writer.

Values are chosen by hand (see tests/test_index_assets.py: World), so each test breaks exactly one
thing: a NaN in one row, or a store whose declared dims do not match its files.
"""

import json

import dagster as dg
import numpy as np
import pytest

from assets.features import (
    ClipResource,
    entity_features_finite_and_shaped,
    mention_features_finite_and_shaped,
)
from assets.resources import LakeResource
from pipeline import catalog
from tests.test_index_assets import World

CHECKS = [entity_features_finite_and_shaped, mention_features_finite_and_shaped]
STORES = [dg.AssetSpec("entity_features"), dg.AssetSpec("mention_features")]  # written outside the run


def run_checks(lake, instance):
    result = dg.materialize([*STORES, *CHECKS], selection=dg.AssetSelection.checks(*CHECKS), instance=instance,
                            resources={"lake": LakeResource(root=str(lake.root)), "clip": ClipResource()},
                            raise_on_error=False)
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


@pytest.fixture
def world(dataset, lake):
    return World(dataset, lake)


def test_clean_stores_pass_with_what_was_checked(world, instance):
    world.write_entities()
    world.write_mentions()

    checks = run_checks(world.lake, instance)

    entities = checks["entity_features_finite_and_shaped"]
    assert entities.passed and entities.severity == dg.AssetCheckSeverity.ERROR
    assert entities.metadata["rows_checked"].value == 10
    assert entities.metadata["store_path"].value == str(catalog.entity_store_dir(world.lake))
    assert "every value finite" in entities.description
    assert checks["mention_features_finite_and_shaped"].passed


def test_a_nan_in_one_entity_row_fails_naming_the_row_and_column(world, instance):
    world.text[4, 0] = np.nan
    world.write_entities()
    world.write_mentions()

    checks = run_checks(world.lake, instance)

    failed = checks["entity_features_finite_and_shaped"]
    assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR
    assert failed.metadata["non_finite_rows"].value["text_pooled"] == 1
    assert failed.metadata["non_finite_rows"].value["text_pooled.npy"] == 1
    assert "| 4 | text_pooled |" in failed.metadata["examples"].value
    assert "rows with NaN/Inf: text_pooled 1" in failed.description
    assert checks["mention_features_finite_and_shaped"].passed


def test_image_values_count_only_where_the_item_has_an_image(world, instance):
    world.image[2, 0] = np.inf  # entity 2 has no image (every third one): nothing reads its image half
    world.image[1, 0] = np.inf  # entity 1 has one
    world.write_entities()

    checks = run_checks(world.lake, instance)

    failed = checks["entity_features_finite_and_shaped"]
    assert failed.metadata["non_finite_rows"].value["image_pooled"] == 1
    assert "| 1 | image_pooled |" in failed.metadata["examples"].value


def test_a_store_whose_dims_disagree_with_its_files_fails_on_shapes(world, instance):
    world.write_entities()
    world.write_mentions()
    manifest_path = catalog.mention_store_dir(world.lake) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["dims"]["D"] = 8  # the files hold D = 16
    manifest_path.write_text(json.dumps(manifest))

    checks = run_checks(world.lake, instance)

    failed = checks["mention_features_finite_and_shaped"]
    assert not failed.passed and failed.metadata["values_checked"].value is False
    shapes = failed.metadata["shape_problems"].value
    assert "expected [3, 8]" in shapes and "stores text_pooled as 16 values per row, expected 8" in shapes
    assert checks["entity_features_finite_and_shaped"].passed


def test_a_missing_store_fails_saying_what_to_materialize(lake, instance):
    checks = run_checks(lake, instance)

    assert not checks["entity_features_finite_and_shaped"].passed
    assert "materialize the features asset first" in checks["entity_features_finite_and_shaped"].description
