"""The entity index on vectors built by hand (no encoder needed): the combination rule, kinds, sync, bad input."""

import dataclasses
import json

import numpy as np
import pytest

from pipeline.errors import MELUserError
from pipeline.index import (
    EntityIndex,
    IndexSettings,
    ItemVectors,
    faiss_index,
    update_entity_index,
)
from pipeline.index.settings import TRAIN_POINTS_PER_LIST
from pipeline.index.vectors import (
    IMAGE_BROKEN,
    TEXT_NOT_FINITE,
    TEXT_ZERO,
    query_matrix,
    read_checked,
)
from pipeline.settings import SettingError, doc_of

ENCODER = {"architecture": "test", "weights": "random-seed-0"}


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_items(n, dim=16, seed=0, ids=None, has_image=None, fingerprint="v1", encoder=ENCODER):
    rng = np.random.default_rng(seed)
    return ItemVectors(
        ids=np.arange(n) if ids is None else np.asarray(ids),
        text=rng.standard_normal((n, dim)).astype(np.float16),
        image=rng.standard_normal((n, dim)).astype(np.float16),
        has_image=np.ones(n, bool) if has_image is None else np.asarray(has_image),
        encoder=dict(encoder), fingerprint=fingerprint)


def with_changes(items, fingerprint, **arrays):
    fields = dict(ids=items.ids, text=items.text, image=items.image, has_image=items.has_image)
    fields.update(arrays)
    return ItemVectors(**fields, encoder=dict(items.encoder), fingerprint=fingerprint)


def search(directory, queries: ItemVectors, k, nprobe=8):
    index = EntityIndex.load(directory)
    scores, ids = index.searcher(nprobe, use_gpu=False)(query_matrix(read_checked(queries, np.arange(len(queries)))), k)
    return scores, ids


def cosines(a, b):
    return unit(np.asarray(a, np.float64)) @ unit(np.asarray(b, np.float64)).T


# -- the combination rule ------------------------------------------------------------------

def test_score_is_the_mean_of_text_and_image_cosines_or_the_text_cosine_without_image(tmp_path):
    entities = random_items(20, seed=1)
    mentions = random_items(2, seed=2, has_image=[True, False])
    update_entity_index(entities, tmp_path, IndexSettings())

    scores, ids = search(tmp_path, mentions, k=20)

    text_cos, image_cos = cosines(mentions.text, entities.text), cosines(mentions.image, entities.image)
    expected_with_image = (text_cos[0] + image_cos[0]) / 2
    np.testing.assert_allclose(scores[0], expected_with_image[ids[0]], atol=1e-3)
    np.testing.assert_allclose(scores[1], text_cos[1][ids[1]], atol=1e-3)
    assert list(ids[0]) == list(np.argsort(-expected_with_image))


def test_an_entity_without_image_is_not_sunk_below_unrelated_pictures(tmp_path):
    # CLIP image vectors share a dominant direction: unrelated pictures still have cosine ~0.9.
    rng = np.random.default_rng(0)
    dim, n = 16, 30
    cone = unit(rng.standard_normal(dim))
    image = cone + 0.3 * unit(rng.standard_normal((n, dim)))
    mention_text = unit(rng.standard_normal(dim))
    text = unit(0.75 * mention_text + 0.66 * unit(rng.standard_normal((n, dim))))  # cosine ~0.6 to the mention
    text[0] = mention_text  # entity 0: the right name and description, but no picture
    entities = ItemVectors(np.arange(n), text.astype(np.float16), image.astype(np.float16),
                           np.arange(n) != 0, ENCODER, "v1")
    mention = ItemVectors(np.array(["m"]), mention_text[None].astype(np.float16),
                          (cone + 0.3 * unit(rng.standard_normal((1, dim)))).astype(np.float16), [True], ENCODER)
    update_entity_index(entities, tmp_path, IndexSettings())

    _, ids = search(tmp_path, mention, k=3)

    assert ids[0][0] == 0  # a zero image half would score it 0.5 against ~0.75 for the others


def test_search_answers_kb_indices(tmp_path):
    kb_indices = [907, 3, 41, 12, 77]
    entities = random_items(5, ids=kb_indices)
    update_entity_index(entities, tmp_path, IndexSettings())

    _, ids = search(tmp_path, with_changes(entities, "q", ids=np.array(list("abcde"))), k=1)

    assert list(ids[:, 0]) == kb_indices


# -- kinds ---------------------------------------------------------------------------------

def clustered_items(n, dim=32, clusters=20, seed=0, fingerprint="v1"):
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((clusters, 2, dim)))[rng.integers(0, clusters, n)]
    vectors = centres + 0.4 * unit(rng.standard_normal((n, 2, dim)))
    return ItemVectors(np.arange(n), vectors[:, 0].astype(np.float16), vectors[:, 1].astype(np.float16),
                       np.ones(n, bool), ENCODER, fingerprint)


def test_auto_switches_to_ivf_past_the_threshold(tmp_path):
    entities = clustered_items(2000)
    queries = with_changes(clustered_items(50, seed=9), "q", ids=np.arange(50).astype(str))

    small = update_entity_index(entities, tmp_path / "flat", IndexSettings(flat_max_entities=2000))
    large = update_entity_index(entities, tmp_path / "ivf", IndexSettings(flat_max_entities=1999))
    exact_scores, exact = search(tmp_path / "flat", queries, k=10)
    probe_all_scores, _ = search(tmp_path / "ivf", queries, k=10, nprobe=large.nlist)
    _, probe_few = search(tmp_path / "ivf", queries, k=10, nprobe=4)

    assert (small.kind, large.kind) == ("flat", "ivf")
    assert large.nlist == 2000 // TRAIN_POINTS_PER_LIST
    # Probing every list is exhaustive; IVF lists hold float16, so scores agree to fp16 precision.
    np.testing.assert_allclose(probe_all_scores, exact_scores, atol=2e-3)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(probe_few, exact)])
    assert overlap > 0.9


# -- sync ----------------------------------------------------------------------------------

def test_sync_removes_and_adds_only_what_changed(tmp_path):
    entities = random_items(300)
    update_entity_index(entities, tmp_path / "index", IndexSettings())
    text = entities.text.copy()
    text[[5, 6, 7]] *= -1  # three entities re-described
    keep = np.setdiff1d(np.arange(300), [10, 11])  # two removed from the KB
    extra = random_items(4, seed=5, ids=[1000, 1001, 1002, 1003])  # four new ones
    changed = ItemVectors(np.concatenate([entities.ids[keep], extra.ids]), np.concatenate([text[keep], extra.text]),
                          np.concatenate([entities.image[keep], extra.image]), np.ones(302, bool), ENCODER, "v2")

    report = update_entity_index(changed, tmp_path / "index", IndexSettings())
    update_entity_index(changed, tmp_path / "fresh", IndexSettings())

    assert report.action == "synced"
    counts = report.counts
    assert (counts.added, counts.removed, counts.updated, counts.unchanged) == (4, 2, 3, 295)
    assert report.entities == 302
    queries = with_changes(random_items(20, seed=7), "q", ids=np.arange(20).astype(str))
    _, synced_ids = search(tmp_path / "index", queries, k=10)
    _, fresh_ids = search(tmp_path / "fresh", queries, k=10)
    assert (synced_ids == fresh_ids).all()


def test_losing_an_image_is_an_update(tmp_path):
    entities = random_items(100)
    update_entity_index(entities, tmp_path, IndexSettings())
    has_image = entities.has_image.copy()
    has_image[42] = False

    report = update_entity_index(with_changes(entities, "v2", has_image=has_image), tmp_path, IndexSettings())

    assert (report.action, report.counts.updated, report.counts.unchanged) == ("synced", 1, 99)


def test_unchanged_features_keep_the_stored_index(tmp_path):
    entities = random_items(50)
    first = update_entity_index(entities, tmp_path, IndexSettings())
    generation = json.loads((tmp_path / "index.json").read_text())["generation"]

    same_store = update_entity_index(entities, tmp_path, IndexSettings())
    same_vectors_new_store = update_entity_index(with_changes(entities, "v1-rewritten"), tmp_path, IndexSettings())

    assert same_store.action == "unchanged"
    assert same_vectors_new_store.action == "synced"
    assert same_vectors_new_store.counts.unchanged == 50
    assert first.fingerprint == same_store.fingerprint == same_vectors_new_store.fingerprint
    assert json.loads((tmp_path / "index.json").read_text())["generation"] == generation  # nothing rewritten


def test_another_encoder_rebuilds(tmp_path):
    entities = random_items(50)
    update_entity_index(entities, tmp_path, IndexSettings())

    report = update_entity_index(random_items(50, encoder={"architecture": "ViT-B-32", "weights": "openai"}),
                                 tmp_path, IndexSettings())

    assert report.action == "built" and "another encoder" in report.reason


def test_changing_more_than_a_quarter_of_the_kb_rebuilds(tmp_path):
    entities = random_items(100)
    update_entity_index(entities, tmp_path, IndexSettings())
    text = entities.text.copy()
    text[:30] *= -1

    report = update_entity_index(with_changes(entities, "v2", text=text), tmp_path, IndexSettings())

    assert report.action == "built" and "30 entities changed" in report.reason


# -- bad input -----------------------------------------------------------------------------

def test_broken_vectors_are_reported_and_never_indexed(tmp_path):
    entities = random_items(10)
    entities.text[3] = np.nan
    entities.text[4] = 0.0
    entities.image[5, 0] = np.inf

    report = update_entity_index(entities, tmp_path, IndexSettings())
    index = EntityIndex.load(tmp_path)

    assert report.entities == 8 and len(index) == 8 and set(index.keys) == set(range(10)) - {3, 4}
    problems = {row["kb_index"]: (row["problem"], row["action"]) for row in index.problems}
    assert problems == {3: (TEXT_NOT_FINITE, "excluded"), 4: (TEXT_ZERO, "excluded"),
                        5: (IMAGE_BROKEN, "indexed_text_only")}
    scores, _ = search(tmp_path, with_changes(entities, "q", ids=np.arange(10).astype(str)), k=8)
    assert np.isfinite(scores[[0, 1, 2, 5, 6]]).all()


def test_an_empty_or_unusable_kb_fails_with_one_sentence(tmp_path):
    empty = random_items(0)
    broken = random_items(3)
    broken.text[:] = np.nan

    with pytest.raises(MELUserError, match="hold no entities; the KB is empty"):
        update_entity_index(empty, tmp_path / "a", IndexSettings())
    with pytest.raises(MELUserError, match="None of the 3 entities .* has a usable text vector"):
        update_entity_index(broken, tmp_path / "b", IndexSettings())


def test_entity_ids_must_be_kb_indices(tmp_path):
    with pytest.raises(MELUserError, match="not KB indices"):
        update_entity_index(random_items(2, ids=["Q1", "Q2"]), tmp_path, IndexSettings())


@pytest.mark.parametrize("settings, message", [
    (dict(kind="hnsw"), "kind='hnsw' is not one of auto, flat, ivf"),
    (dict(nprobe=0), "nprobe=0 must be at least 1"),
    (dict(use_gpu="yes"), "use_gpu='yes' is not one of"),
    (dict(nlist=-1), "nlist=-1 must be 0"),
    (dict(candidates_per_mention=0), "candidates_per_mention=0 must be at least 1"),
    (dict(min_recall=1.5), "min_recall=1.5 must be between 0 and 1"),
])
def test_bad_settings_name_the_setting(settings, message):
    with pytest.raises(MELUserError, match=message) as raised:
        IndexSettings(**settings)
    assert isinstance(raised.value, SettingError) and raised.value.message.startswith(next(iter(settings)))


def test_every_setting_has_a_one_line_description():
    docs = {setting.name: doc_of(setting) for setting in dataclasses.fields(IndexSettings)}
    assert all(doc and "\n" not in doc for doc in docs.values()), docs


def test_an_nlist_above_the_kb_size_is_refused(tmp_path):
    with pytest.raises(MELUserError, match="nlist=500 exceeds the 100 usable entities"):
        update_entity_index(random_items(100), tmp_path, IndexSettings(kind="ivf", nlist=500))


@pytest.mark.skipif(IndexSettings(use_gpu="auto").gpu(), reason="a GPU is present")
def test_asking_for_a_gpu_without_one_is_refused():
    with pytest.raises(MELUserError, match="use_gpu='always' needs faiss with GPU support"):
        IndexSettings(use_gpu="always").gpu()


def test_an_interrupted_save_leaves_the_previous_index(tmp_path, monkeypatch):
    entities = random_items(50)
    first = update_entity_index(entities, tmp_path, IndexSettings())
    text = entities.text.copy()
    text[0] *= -1

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(faiss_index, "write_text_atomic", crash)
    with pytest.raises(OSError):
        update_entity_index(with_changes(entities, "v2", text=text), tmp_path, IndexSettings())
    monkeypatch.undo()

    assert EntityIndex.load(tmp_path).fingerprint == first.fingerprint
    retried = update_entity_index(with_changes(entities, "v2", text=text), tmp_path, IndexSettings())
    assert retried.counts.updated == 1
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2  # the new generation and the one before


def test_a_corrupt_index_is_refused_on_load_and_rebuilt_on_update(tmp_path):
    entities = random_items(50)
    update_entity_index(entities, tmp_path, IndexSettings())
    generation = json.loads((tmp_path / "index.json").read_text())["generation"]
    (tmp_path / generation / "index.faiss").write_bytes(b"not an index")

    with pytest.raises(MELUserError, match="incomplete or corrupt"):
        EntityIndex.load(tmp_path)
    report = update_entity_index(entities, tmp_path, IndexSettings())
    assert report.action == "built" and len(EntityIndex.load(tmp_path)) == 50


def test_a_missing_index_is_a_user_error(tmp_path):
    with pytest.raises(MELUserError, match="There is no entity index at .*; materialize entity_index first"):
        EntityIndex.load(tmp_path / "nothing")


def test_an_ivf_index_syncs_in_place(tmp_path):
    entities = clustered_items(1000)
    built = update_entity_index(entities, tmp_path, IndexSettings(kind="ivf"))
    text = entities.text.copy()
    text[[1, 2, 3]] = -text[[1, 2, 3]]

    changed = with_changes(entities, "v2", text=text)
    report = update_entity_index(changed, tmp_path, IndexSettings(kind="ivf"))
    _, ids = search(tmp_path, with_changes(changed, "q", ids=np.arange(1000).astype(str)), k=1,
                    nprobe=built.nlist)

    assert (report.action, report.kind, report.counts.updated, report.counts.unchanged) == ("synced", "ivf", 3, 997)
    assert (ids[[1, 2, 3], 0] == [1, 2, 3]).all()  # found by their new vectors
