"""The index assets, run through Dagster as the UI runs them.

One test runs the whole chain with the real (untrained) CLIP encoder. The others write the
feature stores through the feature store's own writer with vectors chosen by hand, so that
recall and sync counts are known in advance and no encoder has to load.
"""

import base64

import dagster as dg
import numpy as np
import pytest
import torch

from assets import features, index, ingest
from assets.features import ClipResource
from assets.index import IndexResource
from assets.resources import DatasetResource, LakeResource
from model.features import MMoEFeatures
from pipeline import catalog
from pipeline.features import StoreWriter
from pipeline.hashing import hash_bytes
from pipeline.index import EntityIndex
from pipeline.ingest import IngestSettings, ingest_dataset
from pipeline.lake import Lake
from tests.conftest import data_version, failure_message, metadata_of

ENCODER = {"arch": "hand-made", "weights": "test vectors"}
DIMS = {"D": 16, "L": 2, "Wt": 4, "P1": 2, "Wv": 4}
INDEX_ASSETS = [index.entity_index, index.mention_candidates]
GOLD = {"train:10": 0, "dev:20": 1, "test:30": 2}  # the MimicDataset's mentions and their KB indices


def resources(lake_root, dataset_dir="", index_resource=None, clip=None):
    return {"lake": LakeResource(root=str(lake_root)), "dataset": DatasetResource(dataset_dir=str(dataset_dir)),
            "clip": clip or ClipResource(num_workers=0, batch_size=8),
            "index": index_resource or IndexResource()}


def materialize(assets, instance, **kwargs):
    return dg.materialize(assets, instance=instance, resources=resources(**kwargs), raise_on_error=False)


def png_of(markdown: str) -> bytes:
    """The PNG that markdown metadata embeds as `![alt](data:image/png;base64,...)`."""
    prefix = "](data:image/png;base64,"
    assert markdown.startswith("![") and prefix in markdown and markdown.endswith(")")
    return base64.b64decode(markdown.split(prefix, 1)[1][:-1])


def write_store(lake, name, ids, text, image, has_image, encoder=ENCODER):
    """A feature store written through the real writer (token states are zeros: the index ignores them)."""
    n = len(ids)
    encoded = MMoEFeatures(
        text_embeds=torch.from_numpy(np.asarray(text, np.float16)),
        image_embeds=torch.from_numpy(np.asarray(image, np.float16)),
        text_tokens=torch.zeros((n, DIMS["L"], DIMS["Wt"]), dtype=torch.float16),
        text_mask=torch.ones((n, DIMS["L"]), dtype=torch.bool),
        image_tokens=torch.zeros((n, DIMS["P1"], DIMS["Wv"]), dtype=torch.float16),
        has_image=torch.from_numpy(np.asarray(has_image, bool)))
    keys = [hash_bytes(encoded.text_embeds[i].numpy().tobytes() + encoded.image_embeds[i].numpy().tobytes())
            for i in range(n)]
    with StoreWriter(catalog.feature_store_dir(lake, name), encoder, recipe={"kind": name}) as writer:
        writer.set_dims(DIMS)
        writer.add(list(ids), keys, encoded, [False] * n, [[] for _ in range(n)])
        writer.commit(list(ids), keys)


class World:
    """The tiny dataset ingested into a lake, and hand-made vectors for its KB and mentions."""

    def __init__(self, dataset, lake: Lake, entities: int = 10):
        rng = np.random.default_rng(0)
        self.lake = lake
        ingest_dataset(lake, IngestSettings(dataset.write()))
        self.text = rng.standard_normal((entities, DIMS["D"]))
        self.image = rng.standard_normal((entities, DIMS["D"]))
        self.has_image = np.arange(entities) % 3 != 2

    @classmethod
    def written(cls, dataset, lake: Lake) -> "World":
        """A world whose entity and mention stores are on disk."""
        world = cls(dataset, lake)
        world.write_entities()
        world.write_mentions()
        return world

    def write_entities(self, encoder=ENCODER):
        ids = [str(i) for i in range(len(self.text))]
        write_store(self.lake, "entity_features", ids, self.text, self.image, self.has_image, encoder)

    def write_mentions(self, encoder=ENCODER):
        """Each mention is a slightly noisy copy of its gold entity."""
        gold = list(GOLD.values())
        noise = np.random.default_rng(1).standard_normal((len(gold), DIMS["D"])) * 0.05
        write_store(self.lake, "mention_features", list(GOLD), self.text[gold] + noise, self.image[gold] + noise,
                    [True, True, False], encoder)


@pytest.fixture
def world(dataset, lake):
    return World.written(dataset, lake)


def test_the_whole_chain_runs_with_the_real_encoder(dataset, tmp_path, instance):
    chain = [ingest.mimic_dataset, features.entity_features, features.mention_features, *INDEX_ASSETS]
    result = materialize(chain, instance, lake_root=tmp_path / "lake", dataset_dir=dataset.write())

    assert result.success, failure_message(result)
    built = metadata_of(result, "entity_index")
    assert (built["index_kind"], built["entities"], built["dim"]) == ("flat", 3, 256)
    assert built["encoder"]["weights"] == "random-init seed=0"
    candidates = metadata_of(result, "mention_candidates")
    assert candidates["k"] == 3 and candidates["recall@3/test"] == 1.0  # top_k=100 clamped to the 3 entities
    table = Lake(tmp_path / "lake").read_table("mention_candidates").to_pylist()
    assert [sorted(row["candidates"]) for row in table] == [[0, 1, 2]] * 3


def test_index_and_candidates_show_kind_counts_and_recall(world, instance):
    result = materialize(INDEX_ASSETS, instance, lake_root=world.lake.root)

    assert result.success, failure_message(result)
    built = metadata_of(result, "entity_index")
    assert (built["index_kind"], built["entities"], built["action"], built["added"]) == ("flat", 10, "built", 10)
    assert (built["dim"], built["index_dim"], built["excluded_entities"]) == (16, 32, 0)
    assert data_version(result, "entity_index") == built["fingerprint"]
    candidates = metadata_of(result, "mention_candidates")
    assert candidates["dagster/row_count"] == 3 and candidates["k"] == 10
    assert {name: candidates[name] for name in candidates if name.startswith("recall@1/")} == {
        "recall@1/train": 1.0, "recall@1/dev": 1.0, "recall@1/test": 1.0}
    assert "| split | mentions_with_gold | recall@1 | recall@10 |" in candidates["recall"]
    assert png_of(candidates["recall_plot"]).startswith(b"\x89PNG")  # one line per split, shown inline
    assert candidates["queries_per_second"] > 0 and candidates["mentions_with_problems"] == 0
    table = world.lake.read_table("mention_candidates").to_pylist()
    assert {row["mention_id"]: row["candidates"][0] for row in table} == GOLD


def test_unchanged_inputs_keep_the_index_and_the_candidates(world, instance):
    first = materialize(INDEX_ASSETS, instance, lake_root=world.lake.root)
    second = materialize(INDEX_ASSETS, instance, lake_root=world.lake.root)

    assert metadata_of(second, "entity_index")["action"] == "unchanged"
    assert metadata_of(second, "mention_candidates")["reused_stored_output"] is True
    for key in ("entity_index", "mention_candidates"):
        assert data_version(first, key) == data_version(second, key)


def test_new_and_changed_entities_are_synced_in_place(world, instance):
    materialize(INDEX_ASSETS, instance, lake_root=world.lake.root)
    # One new entity (KB index 10) and one re-described (7).
    world.text = np.concatenate([world.text, np.random.default_rng(5).standard_normal((1, DIMS["D"]))])
    world.image = np.concatenate([world.image, world.image[:1]])
    world.has_image = np.append(world.has_image, True)
    world.text[7] *= -1
    world.write_entities()

    result = materialize(INDEX_ASSETS, instance, lake_root=world.lake.root)

    synced = metadata_of(result, "entity_index")
    assert (synced["action"], synced["added"], synced["removed"], synced["updated"], synced["unchanged"]) == (
        "synced", 1, 0, 1, 9)
    assert 10 in EntityIndex.load(catalog.entity_index_dir(world.lake)).keys
    assert metadata_of(result, "mention_candidates")["k"] == 11


def test_a_broken_entity_vector_is_reported_not_indexed(world, instance):
    world.text[4] = np.nan
    world.write_entities()

    result = materialize(INDEX_ASSETS, instance, lake_root=world.lake.root)

    built = metadata_of(result, "entity_index")
    assert (built["entities"], built["excluded_entities"]) == (9, 1)
    assert "| 4 | text vector has NaN/Inf values | excluded |" in built["problems"]


def test_an_ivf_index_can_be_asked_for(world, instance):
    result = materialize(INDEX_ASSETS, instance, lake_root=world.lake.root,
                         index_resource=IndexResource(kind="ivf", nprobe=4))

    assert result.success, failure_message(result)
    built = metadata_of(result, "entity_index")
    assert (built["index_kind"], built["nlist"]) == ("ivf", 1)
    assert metadata_of(result, "mention_candidates")["recall@1/train"] == 1.0


def test_mention_features_from_another_encoder_are_refused(world, instance):
    world.write_mentions(encoder={"arch": "ViT-B-32", "weights": "pretrained:openai"})

    result = materialize(INDEX_ASSETS, instance, lake_root=world.lake.root)

    message = failure_message(result)
    assert "were written by encoder arch=ViT-B-32, weights=pretrained:openai" in message
    assert "built with arch=hand-made, weights=test vectors" in message


def test_candidates_without_mention_features_fail_with_one_sentence(dataset, lake, instance):
    world = World(dataset, lake)
    world.write_entities()

    result = materialize(INDEX_ASSETS, instance, lake_root=lake.root)

    assert "No feature store at" in failure_message(result) and "mention_features" in failure_message(result)
    assert metadata_of(result, "entity_index")["entities"] == 10


def test_a_bad_index_setting_fails_with_one_sentence(world, instance):
    result = materialize(INDEX_ASSETS, instance, lake_root=world.lake.root,
                         index_resource=IndexResource(kind="hnsw"))

    assert "IndexResource.kind='hnsw' is not one of auto, flat, ivf." in failure_message(result)
