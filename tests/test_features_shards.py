"""KB shards: each shard encodes into its own store; entity_features assembles them into the store one process
would have written, linking the shards' parts instead of copying them."""

import os

import pytest

from pipeline.errors import MELUserError
from pipeline.features import EncoderSpec, FeatureStore, entity_items, extract_features
from pipeline.features.shards import KBShards, store_content_digest
from pipeline.ingest import IngestSettings, ingest_dataset
from pipeline.lake import Lake
from synthetic.demo import generate_demo_dataset

SPEC = EncoderSpec(device="cpu", batch_size=8, num_workers=0)  # mel-tiny-clip, random init, seed 0


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    dataset = generate_demo_dataset(root / "dataset", seed=3, num_entities=24, num_mentions=30).out_dir
    lake = Lake(root / "lake")
    ingest_dataset(lake, IngestSettings(dataset))
    return lake


def encode(items, path, **options):
    return extract_features(items, path, SPEC, **options)


def test_an_entity_stays_in_its_shard_and_the_shards_split_the_kb_evenly():
    shards = KBShards(4)
    assert [shards.of(i) for i in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert shards.keys == ["0", "1", "2", "3"] and KBShards(12).keys[:3] == ["00", "01", "02"]
    assert KBShards(12).shard("07") == 7
    with pytest.raises(MELUserError, match="not a KB shard of 4"):
        shards.shard("4")
    with pytest.raises(MELUserError, match="at least 1"):
        KBShards(0)


def test_shard_count_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MEL_KB_SHARDS", "6")
    assert KBShards.from_env().count == 6
    monkeypatch.setenv("MEL_KB_SHARDS", "four")
    with pytest.raises(MELUserError, match="MEL_KB_SHARDS='four' is not a whole number"):
        KBShards.from_env()


def test_assembled_shards_hold_what_one_process_encodes_without_encoding_or_copying(lake, tmp_path):
    items, shards = entity_items(lake), KBShards(3)
    encode(items, tmp_path / "one_process")
    for shard in range(shards.count):
        encode(shards.select(items, shard), shards.store_dir(lake, shard))

    report = encode(items, tmp_path / "assembled", reuse_from=shards.store_dirs(lake))

    assert report.encoded == 0 and report.reused == len(items) == 24
    shard_parts = sum(len(FeatureStore.open(path).manifest["parts"]) for path in shards.store_dirs(lake))
    assert report.parts_linked == shard_parts
    one, assembled = FeatureStore.open(tmp_path / "one_process"), FeatureStore.open(tmp_path / "assembled")
    assert assembled.ids.tolist() == one.ids.tolist()  # the entities table's order, not the shards'
    assert assembled.fingerprint == one.fingerprint
    assert store_content_digest(assembled) == store_content_digest(one)
    part = assembled.root / "parts" / f"{assembled.manifest['parts'][0]}.parquet"
    assert os.stat(part).st_nlink == 2  # a hard link to the shard's part: no feature bytes copied


def test_what_no_shard_holds_is_encoded_by_the_assembly(lake, tmp_path):
    items, shards = entity_items(lake), KBShards(4)
    encode(shards.select(items, 0), tmp_path / "shard0")
    encode(shards.select(items, 1), tmp_path / "shard1")  # shards 2 and 3 never ran

    report = encode(items, tmp_path / "assembled", reuse_from=(tmp_path / "shard0", tmp_path / "shard1",
                                                               tmp_path / "missing"))

    assert report.encoded == len(shards.select(items, 2)) + len(shards.select(items, 3))
    assert report.reused == len(shards.select(items, 0)) + len(shards.select(items, 1))
    encode(items, tmp_path / "one_process")
    assert store_content_digest(FeatureStore.open(tmp_path / "assembled")) == \
        store_content_digest(FeatureStore.open(tmp_path / "one_process"))


def test_a_shard_written_by_another_encoder_is_not_linked(lake, tmp_path):
    items, shards = entity_items(lake), KBShards(2)
    other = EncoderSpec(device="cpu", seed=1, batch_size=8, num_workers=0)
    extract_features(shards.select(items, 0), tmp_path / "shard0", other)

    report = encode(items, tmp_path / "assembled", reuse_from=(tmp_path / "shard0",))

    assert report.parts_linked == 0 and report.encoded == len(items)
