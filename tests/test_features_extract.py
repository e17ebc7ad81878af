"""Extraction is incremental and crash-safe, checked by counting the items actually encoded."""

import dataclasses
import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from pipeline.features import FeatureStore, Items, extract_features
from pipeline.features import EncoderSpec
from pipeline.hashing import hash_file
from tests.conftest import write_image

SPEC = EncoderSpec()  # mel-tiny-clip, random init, seed 0


def make_items(tmp_path, count: int, with_images: int = 0) -> Items:
    """``count`` entities; the first ``with_images`` have a small JPEG each."""
    files = [write_image(tmp_path / "images" / f"{i}.jpg", color=(40 * i % 256, 90, 150)) for i in range(with_images)]
    return Items(
        kind="entity",
        ids=[str(i) for i in range(count)],
        texts=[f"Entity {i} [SEP] a thing numbered {i}" for i in range(count)],
        image_files=[str(f) for f in files] + [None] * (count - with_images),
        image_digests=[hash_file(f) for f in files] + [None] * (count - with_images),
        recipe={"kind": "entity"},
    )


def extract(items, store, spec=SPEC, batch_size=16, num_workers=0, **options):
    spec = dataclasses.replace(spec, batch_size=batch_size, num_workers=num_workers)
    return extract_features(items, store, spec, **options)


def part_files(store):
    return sorted(p.name for p in (store / "parts").glob("*.parquet"))


def test_unchanged_inputs_encode_nothing_and_rewrite_nothing(tmp_path):
    items, store = make_items(tmp_path, 6, with_images=2), tmp_path / "store"
    first = extract(items, store)
    manifest = (store / "manifest.json").read_text()

    second = extract(items, store)

    assert (first.encoded, first.reused) == (6, 0)
    assert (second.encoded, second.reused, second.committed) == (0, 6, False)
    assert (store / "manifest.json").read_text() == manifest and second.fingerprint == first.fingerprint


def test_changing_one_percent_of_the_items_encodes_only_those(tmp_path):
    items, store = make_items(tmp_path, 100), tmp_path / "store"
    extract(items, store, part_rows=25)
    before = FeatureStore.open(store)
    untouched_before = before.take(before.row_of([str(i) for i in range(1, 100)]))

    items.texts[0] = "Entity 0 [SEP] a thing with a new description"
    report = extract(items, store, part_rows=25)

    after = FeatureStore.open(store)
    assert (report.encoded, report.reused) == (1, 99)
    assert after.fingerprint != before.fingerprint
    untouched_after = after.take(after.row_of([str(i) for i in range(1, 100)]))
    assert torch.equal(untouched_after.text_tokens, untouched_before.text_tokens)


def test_a_new_image_file_content_re_encodes_that_item(tmp_path):
    items, store = make_items(tmp_path, 4, with_images=2), tmp_path / "store"
    extract(items, store)

    write_image(tmp_path / "images" / "1.jpg", color=(250, 250, 0))
    items.image_digests[1] = hash_file(tmp_path / "images" / "1.jpg")
    report = extract(items, store)

    assert (report.encoded, report.reused) == (1, 3)


def test_changing_the_encoder_re_encodes_everything_and_drops_the_old_parts(tmp_path):
    items, store = make_items(tmp_path, 8, with_images=2), tmp_path / "store"
    extract(items, store, part_rows=4)
    old_parts = part_files(store)

    report = extract(items, store, spec=EncoderSpec(seed=1), part_rows=4)

    assert (report.encoded, report.reused) == (8, 0)
    assert not set(old_parts) & set(part_files(store))
    assert FeatureStore.open(store).encoder["weights"] == "random-init seed=1"


def test_removed_items_disappear_from_the_store(tmp_path):
    items, store = make_items(tmp_path, 8), tmp_path / "store"
    extract(items, store, part_rows=4)

    kept = Items("entity", items.ids[4:], items.texts[4:], items.image_files[4:], items.image_digests[4:], items.recipe)
    report = extract(kept, store, part_rows=4)

    reopened = FeatureStore.open(store)
    assert report.encoded == 0 and reopened.ids.tolist() == ["4", "5", "6", "7"]
    assert len(part_files(store)) == 1
    with pytest.raises(KeyError):
        reopened.row_of(["0"])


def test_items_with_equal_text_and_image_are_encoded_once(tmp_path):
    items = make_items(tmp_path, 3)
    items.texts[2] = items.texts[0]

    report = extract(items, tmp_path / "store")

    store = FeatureStore.open(tmp_path / "store")
    assert report.encoded == 2 and len(store) == 3
    assert torch.equal(store.take([0]).text_tokens, store.take([2]).text_tokens)


def test_force_re_encodes_every_item(tmp_path):
    items, store = make_items(tmp_path, 5), tmp_path / "store"
    extract(items, store)

    report = extract(items, store, force=True)

    assert report.encoded == 5 and report.committed


def test_worker_processes_give_the_same_features_as_the_main_process(tmp_path):
    items = make_items(tmp_path, 6, with_images=3)

    extract(items, tmp_path / "inline", num_workers=0)
    extract(items, tmp_path / "workers", num_workers=2, batch_size=4)

    inline, workers = FeatureStore.open(tmp_path / "inline"), FeatureStore.open(tmp_path / "workers")
    assert inline.fingerprint == workers.fingerprint
    assert torch.equal(inline.take(range(6)).image_tokens, workers.take(range(6)).image_tokens)


def test_an_image_missing_at_extraction_is_retried_on_the_next_run(tmp_path):
    items, store = make_items(tmp_path, 3, with_images=2), tmp_path / "store"
    image = tmp_path / "images" / "0.jpg"
    saved = image.read_bytes()
    image.unlink()

    first = extract(items, store)
    image.write_bytes(saved)
    second = extract(items, store)

    assert first.issues_by_code == {"image_missing": 1} and first.encoded == 3
    assert second.encoded == 1 and second.issues_by_code == {}
    assert FeatureStore.open(store).has_image.tolist() == [True, True, False]


def test_a_killed_run_resumes_from_its_finished_parts(tmp_path):
    items, store = make_items(tmp_path, 40, with_images=4), tmp_path / "store"
    (tmp_path / "items.json").write_text(json.dumps(items.__dict__))
    child = textwrap.dedent(f"""
        import json, os, signal
        from pathlib import Path
        from pipeline.features import Items, extract_features
        from pipeline.features import EncoderSpec

        items = Items(**json.loads(Path({str(tmp_path / "items.json")!r}).read_text()))
        parts = Path({str(store)!r}) / "parts"

        def die_once_a_part_is_on_disk(done, total):
            if any(parts.glob("*.parquet")):
                os.kill(os.getpid(), signal.SIGKILL)

        extract_features(items, parts.parent, EncoderSpec(batch_size=4, num_workers=0), part_rows=8,
                         on_batch=die_once_a_part_is_on_disk)
    """)
    killed = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    finished_rows = 8 * len(part_files(store))
    assert 0 < finished_rows < 40 and not (store / "manifest.json").exists()

    report = extract(items, store, part_rows=8)

    assert (report.reused, report.encoded) == (finished_rows, 40 - finished_rows)
    assert FeatureStore.open(store).ids.tolist() == items.ids


def test_encoded_features_are_finite_and_follow_the_items(tmp_path):
    items = make_items(tmp_path, 4, with_images=2)

    extract(items, tmp_path / "store")

    store = FeatureStore.open(tmp_path / "store")
    batch = store.take(range(4))
    assert store.has_image.tolist() == [True, True, False, False]
    assert np.isfinite(batch.text_tokens.float().numpy()).all()
    assert store.dims == {"D": 256, "L": 50, "Wt": 256, "P1": 50, "Wv": 256}
    assert not torch.equal(batch.image_embeds[0], batch.image_embeds[1])  # two different images
    assert torch.equal(batch.image_embeds[2], batch.image_embeds[3])  # both the zero image
