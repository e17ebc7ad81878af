"""The feature store on its own: what the writer commits, the reader gives back, row for row.

Rows are synthetic (random float16 arrays), so these tests need no model.
"""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from model.features import MMoEFeatures
from pipeline.errors import MELUserError
from pipeline.features.schema import store_fingerprint
from pipeline.features.store import FeatureStore
from pipeline.features.writer import StoreWriter

DIMS = {"D": 8, "L": 5, "Wt": 6, "P1": 4, "Wv": 3}
IDENTITY = {"arch": "synthetic", "weights": "random-init seed=0"}
RECIPE = {"kind": "entity"}


def synthetic_rows(n: int, seed: int = 0) -> MMoEFeatures:
    rng = np.random.default_rng(seed)

    def floats(*shape):
        return torch.from_numpy(rng.standard_normal((n, *shape)).astype(np.float16))

    lengths = rng.integers(1, DIMS["L"] + 1, n)
    return MMoEFeatures(
        text_embeds=floats(DIMS["D"]),
        text_tokens=floats(DIMS["L"], DIMS["Wt"]),
        text_mask=torch.from_numpy(np.arange(DIMS["L"])[None] < lengths[:, None]),
        image_embeds=floats(DIMS["D"]),
        image_tokens=floats(DIMS["P1"], DIMS["Wv"]),
        has_image=torch.from_numpy(rng.random(n) < 0.7),
    )


def write(root, ids, keys, rows: MMoEFeatures | None, part_rows=4, issues=None, retry=None, commit=True):
    with StoreWriter(root, IDENTITY, RECIPE, part_rows=part_rows) as writer:
        writer.set_dims(DIMS)
        if rows is not None:
            todo = [i for i, key in enumerate(keys) if key not in writer.reusable_keys]
            writer.add([ids[i] for i in todo], [keys[i] for i in todo], rows.select(todo),
                       retry or [False] * len(todo), issues or [[] for _ in todo])
        return writer.commit(ids, keys) if commit else None


@pytest.fixture
def store_root(tmp_path):
    return tmp_path / "store"


def ids_and_keys(n):
    return [f"item{i}" for i in range(n)], [f"key{i}" for i in range(n)]


def test_take_returns_exactly_the_written_rows_in_any_order_with_repeats(store_root):
    ids, keys = ids_and_keys(10)
    rows = synthetic_rows(10)
    write(store_root, ids, keys, rows)

    store = FeatureStore.open(store_root)
    batch = store.take([7, 2, 2, 9, 0])

    picked = [7, 2, 2, 9, 0]
    assert len(store) == 10 and store.ids.tolist() == ids
    assert torch.equal(batch.text_tokens, rows.text_tokens[picked])
    assert torch.equal(batch.image_tokens, rows.image_tokens[picked])
    assert torch.equal(batch.text_embeds, rows.text_embeds[picked])
    assert torch.equal(batch.image_embeds, rows.image_embeds[picked])
    assert torch.equal(batch.text_mask, rows.text_mask[picked])
    assert torch.equal(batch.has_image, rows.has_image[picked])
    assert batch.text_tokens.dtype == torch.float16 and batch.text_mask.dtype == torch.bool


def test_take_casts_on_request_and_returns_copies(store_root):
    ids, keys = ids_and_keys(6)
    write(store_root, ids, keys, synthetic_rows(6))
    store = FeatureStore.open(store_root)

    batch = store.take([1, 3], dtype=torch.float32)
    batch.text_tokens.fill_(123.0)

    assert batch.text_tokens.dtype == torch.float32 and batch.has_image.dtype == torch.bool
    assert not torch.any(store.take([1, 3]).text_tokens == 123.0)


def test_pooled_is_a_read_only_memory_map_of_all_rows(store_root):
    ids, keys = ids_and_keys(9)
    rows = synthetic_rows(9)
    write(store_root, ids, keys, rows)

    store = FeatureStore.open(store_root)
    text, image = store.pooled("text"), store.pooled("image")

    assert isinstance(text, np.memmap) and not text.flags.writeable
    assert text.dtype == np.float16 and text.shape == (9, DIMS["D"])
    assert np.array_equal(text, rows.text_embeds.numpy()) and np.array_equal(image, rows.image_embeds.numpy())
    assert store.dims == DIMS and store.encoder == IDENTITY and store.has_image.tolist() == rows.has_image.tolist()


def test_row_of_maps_ids_and_names_the_missing_ones(store_root):
    ids, keys = ids_and_keys(5)
    write(store_root, ids, keys, synthetic_rows(5))
    store = FeatureStore.open(store_root)

    assert store.row_of(["item4", "item0"]).tolist() == [4, 0]
    with pytest.raises(KeyError, match="2 id.*nope1, nope2"):
        store.row_of(["item1", "nope1", "nope2"])


def test_opening_a_missing_or_incomplete_store_says_so_in_one_sentence(store_root):
    with pytest.raises(MELUserError, match="No feature store at"):
        FeatureStore.open(store_root)

    ids, keys = ids_and_keys(3)
    write(store_root, ids, keys, synthetic_rows(3))
    manifest = json.loads((store_root / "manifest.json").read_text())
    (store_root / manifest["files"]["rows"]).unlink()
    with pytest.raises(MELUserError, match="is incomplete"):
        FeatureStore.open(store_root)


def test_a_deleted_mirror_is_rebuilt_from_its_parquet_part(store_root):
    ids, keys = ids_and_keys(8)
    rows = synthetic_rows(8)
    write(store_root, ids, keys, rows)
    mirrors = sorted((store_root / "parts").glob("*.arrow"))
    mirrors[0].unlink()

    store = FeatureStore.open(store_root)

    assert mirrors[0].is_file()
    assert torch.equal(store.take(range(8)).image_tokens, rows.image_tokens)


def test_parts_are_self_describing_parquet_with_fixed_size_float16_lists(store_root):
    ids, keys = ids_and_keys(4)
    write(store_root, ids, keys, synthetic_rows(4))
    [part] = (store_root / "parts").glob("*.parquet")

    schema = pq.read_schema(part)
    shapes = json.loads(schema.metadata[b"mel.feature_shapes"])

    assert str(schema.field("image_tokens").type) == "fixed_size_list<element: halffloat not null>[12]"
    assert shapes["image_tokens"] == [DIMS["P1"], DIMS["Wv"]] and shapes["text_tokens"] == [DIMS["L"], DIMS["Wt"]]
    assert json.loads(schema.metadata[b"mel.encoder"]) == IDENTITY
    assert pq.read_table(part, columns=["id"]).column("id").to_pylist() == ids


def test_fingerprint_ignores_row_order_but_follows_ids_and_keys():
    ids, keys = ids_and_keys(4)
    base = store_fingerprint(ids, keys)

    assert store_fingerprint(ids[::-1], keys[::-1]) == base
    assert store_fingerprint(ids, keys[:3] + ["changed"]) != base
    assert store_fingerprint(ids[:3], keys[:3]) != base


def test_an_unchanged_commit_writes_nothing(store_root):
    ids, keys = ids_and_keys(4)
    first = write(store_root, ids, keys, synthetic_rows(4))
    manifest_before = (store_root / "manifest.json").read_text()

    second = write(store_root, ids, keys, None)

    assert first.changed and not second.changed
    assert (store_root / "manifest.json").read_text() == manifest_before


def test_removed_items_disappear_and_fully_dead_parts_are_deleted(store_root):
    ids, keys = ids_and_keys(8)  # two parts of 4 rows
    write(store_root, ids, keys, synthetic_rows(8))
    parts_before = sorted(p.name for p in (store_root / "parts").glob("*.parquet"))

    result = write(store_root, ids[4:], keys[4:], None)

    store = FeatureStore.open(store_root)
    assert store.ids.tolist() == ids[4:]
    assert result.parts_deleted == 1
    assert sorted(p.name for p in (store_root / "parts").glob("*.parquet")) == parts_before[1:]


def test_mostly_dead_parts_are_compacted_and_keep_their_values(store_root):
    ids, keys = ids_and_keys(8)
    rows = synthetic_rows(8)
    write(store_root, ids, keys, rows)
    survivors = [0, 4, 5, 6, 7]  # part 1 keeps 1 row of 4: below half, rewritten

    write(store_root, [ids[i] for i in survivors], [keys[i] for i in survivors], None)

    store = FeatureStore.open(store_root)
    assert len(store.manifest["parts"]) == 2
    live = [int(n) for n in pq.read_table(store_root / store.manifest["files"]["rows"]).column("part").to_pylist()]
    assert sorted(live.count(p) for p in set(live)) == [1, 4]
    assert torch.equal(store.take(range(5)).text_tokens, rows.text_tokens[survivors])


def test_parts_of_an_uncommitted_run_are_reused_by_the_next_one(store_root):
    ids, keys = ids_and_keys(8)
    rows = synthetic_rows(8)
    write(store_root, ids[:4], keys[:4], synthetic_rows(4))
    before = FeatureStore.open(store_root).fingerprint

    write(store_root, ids, keys, rows, commit=False)  # a run that ended before its commit
    assert FeatureStore.open(store_root).fingerprint == before  # readers still see the old generation

    with StoreWriter(store_root, IDENTITY, RECIPE, part_rows=4) as writer:
        assert set(keys) <= writer.reusable_keys
        writer.commit(ids, keys)
    assert torch.equal(FeatureStore.open(store_root).take([5]).image_embeds, rows.image_embeds[[5]])


def test_retry_rows_are_served_but_never_reused(store_root):
    ids, keys = ids_and_keys(2)
    issue = {"field": "image", "code": "image_missing", "detail": "x.jpg does not exist", "action": "encoded_without_image"}
    write(store_root, ids, keys, synthetic_rows(2), retry=[True, False], issues=[[issue], []])

    store = FeatureStore.open(store_root)
    with StoreWriter(store_root, IDENTITY, RECIPE) as writer:
        reusable = writer.reusable_keys

    assert store.issues.to_pylist() == [{"id": "item0", **issue}]
    assert reusable == {"key1"}


def test_a_different_encoder_identity_reuses_nothing(store_root):
    ids, keys = ids_and_keys(3)
    write(store_root, ids, keys, synthetic_rows(3))

    with StoreWriter(store_root, {**IDENTITY, "weights": "random-init seed=1"}, RECIPE) as writer:
        assert writer.reusable_keys == set()
