"""Items -> feature store: encode what the store does not hold yet, commit, report.

Each item's content key is hash(encoder identity, text, image digest). The store already holds the features
of every key it encoded before (committed parts and parts left by a crashed run alike), so a run encodes
only new keys: nothing when inputs are unchanged, the changed 1% after a 1% edit, everything after an
encoder change. Items with equal keys (same text and image) are encoded once.

Throughput: tokenizing and image decoding/resizing run in ``DataLoader`` worker processes (``num_workers``;
0 decodes in the main process) with batches prefetched and pinned on CUDA, so the model does not wait on
JPEG decoding; workers send uint8 pixels and the encoder normalises them batched on its device; part files
are written by background threads. The log gets a tqdm
progress line every ``PROGRESS_SECONDS`` and a summary with items/s and the share of time the model
waited for input.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from model.features import MMoEFeatures, nonfinite_rows
from pipeline.errors import MELUserError
from pipeline.features.encoder import ClipEncoder, load_encoder, tokenize
from pipeline.features.images import load_item_image
from pipeline.features.items import Items
from pipeline.features.settings import EncoderSpec
from pipeline.features.store import FeatureStore
from pipeline.features.writer import StoreWriter
from pipeline.progress import LogStream

PROGRESS_SECONDS = 10.0

log = logging.getLogger(__name__)


@dataclass
class ExtractReport:
    items: int
    encoded: int  # items whose features were computed in this run
    reused: int  # items served from stored parts
    seconds: float  # the whole run
    encode_seconds: float  # the encoding loop only
    input_wait_seconds: float  # time the model waited for the data loader
    fingerprint: str
    committed: bool  # False: the store already held exactly these items, nothing was written
    issues_by_code: dict[str, int]
    encoder: dict
    dims: dict
    parts_linked: int = 0  # parts of the `reuse_from` stores linked in before encoding
    store: FeatureStore | None = None  # the committed store, open for reading (its issues, recipe, disk use)

    @property
    def items_per_second(self) -> float:
        return self.encoded / self.encode_seconds if self.encode_seconds > 0 else 0.0


class ItemDataset(Dataset):
    """Tokenizes the text and loads, checks and preprocesses the image of each item (in worker processes)."""

    def __init__(self, texts, image_files, image_digests, encoder: ClipEncoder):
        self.texts, self.image_files, self.image_digests = texts, image_files, image_digests
        self.tokenizer = encoder.tokenizer
        self.context_length = encoder.context_length
        self.text_tokens = encoder.spec.text_tokens
        self.image_transform = encoder.image_transform
        self.image_size = encoder.image_size

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict:
        text = self.texts[index]
        tokenized = tokenize(self.tokenizer, text, self.context_length)
        issues = []
        if not text.strip():
            issues.append(_issue("text", "empty_text", "the item's text is empty; encoded as an empty string",
                                 "encoded_empty_text"))
        if tokenized.untruncated is None or tokenized.untruncated > self.context_length:
            needed = "more" if tokenized.untruncated is None else tokenized.untruncated
            issues.append(_issue(
                "text", "text_truncated",
                f"the text needs {needed} tokens; the pooled vector reads the first {self.context_length} "
                f"and the store keeps the first {self.text_tokens} token states", "encoded_truncated"))
        image, retry = None, False
        if self.image_files[index]:
            loaded = load_item_image(self.image_files[index], self.image_digests[index], self.image_size)
            if loaded.image is not None:
                try:
                    image = self.image_transform(loaded.image)
                except (OSError, ValueError, RuntimeError) as error:
                    loaded.code, loaded.detail = "preprocess_failed", f"{self.image_files[index]}: {error}"
            if image is None:
                issues.append(_issue("image", loaded.code, loaded.detail, "encoded_without_image"))
                retry = loaded.retry
        return {"index": index, "tokens": tokenized.tokens, "length": min(tokenized.length, self.context_length),
                "image": image, "issues": issues, "retry": retry}


def _issue(field: str, code: str, detail: str, action: str) -> dict:
    return {"field": field, "code": code, "detail": detail, "action": action}


def collate(samples: list[dict]) -> dict:
    images = [s["image"] for s in samples if s["image"] is not None]
    return {
        "index": torch.tensor([s["index"] for s in samples]),
        "tokens": torch.stack([s["tokens"] for s in samples]),
        "length": torch.tensor([s["length"] for s in samples]),
        "images": torch.stack(images) if images else torch.zeros(0),
        "has_image": torch.tensor([s["image"] is not None for s in samples]),
        "issues": [s["issues"] for s in samples],
        "retry": [s["retry"] for s in samples],
    }


def make_loader(dataset: ItemDataset, encoder: ClipEncoder, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate,
        pin_memory=encoder.device.type == "cuda",
        prefetch_factor=4 if num_workers else None, persistent_workers=False,
    )


def extract_features(
    items: Items,
    store_dir,
    spec: EncoderSpec,
    *,
    part_rows: int | None = None,
    force: bool = False,
    reuse_from=(),
    logger=log,
    on_batch: Callable[[int, int], None] | None = None,
) -> ExtractReport:
    """Bring the store at ``store_dir`` to exactly ``items``; encode only what it does not hold.

    ``reuse_from``: other stores (the KB shards' stores) whose rows of the same encoder are reused, linked in
    without copying. ``force`` re-encodes every item. ``on_batch(encoded_so_far, to_encode)`` is called after
    each batch.
    """
    started = time.perf_counter()
    identity_json = spec.identity_json()
    identity = spec.identity()
    keys = items.content_keys(identity_json)
    with StoreWriter(store_dir, identity, items.recipe, part_rows=part_rows, logger=logger,
                     reuse_from=() if force else reuse_from) as writer:
        reusable = set() if force else writer.reusable_keys
        todo = _first_of_each_new_key(keys, reusable)
        encode_seconds = wait_seconds = 0.0
        device = "none"
        if todo or writer.dims is None:
            encoder = load_encoder(spec, logger)
            writer.set_dims(encoder.dims)
            device = f"{encoder.device} autocast={encoder.autocast_dtype}"
        linked = f" ({writer.parts_linked} part(s) linked from the shard stores)" if writer.parts_linked else ""
        if todo:
            logger.info(f"{items.kind} features: {len(todo)} of {len(items)} items to encode, "
                        f"{len(items) - len(todo)} reused from {writer.root}{linked}.")
            encode_seconds, wait_seconds = _encode(items, keys, todo, encoder, writer, spec.batch_size,
                                                   spec.num_workers, logger, on_batch)
        else:
            logger.info(f"{items.kind} features: all {len(items)} items already in {writer.root}{linked}; "
                        "nothing to encode.")
        result = writer.commit(items.ids, keys, provenance={"encoded": len(todo), "device": device})
        report = ExtractReport(
            items=len(items), encoded=len(todo), reused=len(items) - len(todo),
            seconds=time.perf_counter() - started, encode_seconds=encode_seconds, input_wait_seconds=wait_seconds,
            fingerprint=result.fingerprint, committed=result.changed,
            issues_by_code=result.issues_by_code, encoder=identity, dims=writer.dims,
            parts_linked=writer.parts_linked,
        )
    report.store = FeatureStore.open(store_dir)
    if todo:
        logger.info(
            f"Encoded {report.encoded} {items.kind} items in {encode_seconds:.1f} s "
            f"({report.items_per_second:.1f} items/s; the model waited for input "
            f"{100 * wait_seconds / max(encode_seconds, 1e-9):.0f}% of the time); "
            f"{result.parts_written} part(s) written, {result.parts_deleted} deleted."
        )
    return report


def _first_of_each_new_key(keys: list[str], reusable: set[str]) -> list[int]:
    seen, todo = set(), []
    for index, key in enumerate(keys):
        if key not in reusable and key not in seen:
            seen.add(key)
            todo.append(index)
    return todo


def _encode(items, keys, todo, encoder, writer, batch_size, num_workers, logger, on_batch) -> tuple[float, float]:
    dataset = ItemDataset([items.texts[i] for i in todo], [items.image_files[i] for i in todo],
                          [items.image_digests[i] for i in todo], encoder)
    # One batch cannot overlap decoding with encoding: starting worker processes would only add their startup.
    loader = make_loader(dataset, encoder, batch_size, num_workers if len(todo) > batch_size else 0)
    progress = tqdm(total=len(todo), unit="item", desc=f"{items.kind} features", file=LogStream(logger),
                    mininterval=PROGRESS_SECONDS, ascii=True, dynamic_ncols=False, ncols=100)
    started = time.perf_counter()
    waited, done = 0.0, 0
    batches = iter(loader)
    while True:
        before = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - before
        if batch is None:
            break
        encoded = encoder.encode(batch["tokens"], batch["length"], batch["images"], batch["has_image"])
        positions = [todo[i] for i in batch["index"].tolist()]
        ids = [items.ids[p] for p in positions]
        _check_finite(encoded, ids, encoder)
        writer.add(ids, [keys[p] for p in positions], encoded, batch["retry"], batch["issues"])
        done += len(positions)
        progress.update(len(positions))
        if on_batch is not None:
            on_batch(done, len(todo))
    progress.close()
    return time.perf_counter() - started, waited


def _check_finite(encoded: MMoEFeatures, ids, encoder) -> None:
    bad = sorted({row for _, tensor in encoded.tensors() for row in nonfinite_rows(tensor)})
    if bad:
        shown = [ids[i] for i in bad[:10]]
        raise MELUserError(
            f"The encoder produced NaN/Inf features for items {shown} (precision "
            f"{encoder.autocast_dtype or 'fp32'}, stored as float16); set the encoder's precision to 'fp32'."
        )


