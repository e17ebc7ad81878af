"""How one item's text and image vectors become one vector for inner-product search.

The rule (``COMBINATION_RULE``), for CLIP's pooled text vector t and image vector i:

    entity e = [ t/|t| , i/|i| ] / sqrt(2)                    (both halves unit length)
    mention q = [ t/|t| , i/|i| ] / sqrt(2)   with an image
    mention q = [ sqrt(2) * t/|t| , 0 ]       without an image

so the inner product q.e is the mean of the text and image cosines when the mention has an
image, and the text cosine alone when it has none. Every score is a mean cosine over the
modalities the mention has, comparable across mentions (a NIL threshold stays meaningful),
and every entity vector has unit norm, which keeps IVF's inner-product clustering sound.

Why not concatenate raw vectors: CLIP's text and image norms differ per item, so one modality
would dominate by accident. Why halves of equal weight: the MMoE matcher learns the weighting;
retrieval only has to keep the gold entity in the top K, and the mean of cosines is the
unbiased choice before training.

An entity without an image is the hard case. Filling its image half with zeros would score
its image cosine as 0, but CLIP cosines between *unrelated* images are far above 0 (they live
in a narrow cone), so every image-less entity would sink below every entity with a picture.
Instead its image half is the normalised mean image vector of the KB (mean imputation): its
image term becomes the mention's similarity to a typical KB image, what an unrelated entity
would score, so missing evidence counts as neutral rather than negative. The mean is computed
when the index is built and frozen with it (a sync reuses it; a rebuild refreshes it). On the
mention side the missing image needs no imputation: a zero image half adds the same 0 to every
entity, so the ranking is by text alone.

Rows that cannot be used are reported, never indexed as garbage: a text vector with NaN/Inf
or zero norm makes the row unusable; a broken image vector on an item flagged as having an
image makes it text-only (like a corrupt image file at ingestion).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import MELUserError

COMBINATION_RULE = (
    "concat(l2n(text), l2n(image) or l2n(kb_mean_image) when the entity has none) / sqrt(2); "
    "mention query: concat(l2n(text), l2n(image)) / sqrt(2), or concat(sqrt(2) * l2n(text), 0) without image"
)
COMBINATION_VERSION = "1"  # bump when the rule above changes: stored indexes are rebuilt
MIN_NORM = 1e-6
DIGEST_SIZE = 16
SQRT2 = np.float32(np.sqrt(2.0))

BATCH_ROWS = 8192

TEXT_NOT_FINITE = "text vector has NaN/Inf values"
TEXT_ZERO = "text vector is all zeros"
IMAGE_BROKEN = "image vector has NaN/Inf values or is all zeros; used as text only"


@dataclass
class ItemVectors:
    """Pooled vectors of items (entities or mentions) in row order.

    ``text`` and ``image`` may be memory-mapped float16 arrays: they are read in row
    batches and converted to float32 only batch by batch.
    """

    ids: np.ndarray  # int64 KB indices for entities, str mention ids for mentions
    text: np.ndarray  # [N, D]
    image: np.ndarray  # [N, D]
    has_image: np.ndarray  # [N] bool
    encoder: dict = field(default_factory=dict)
    fingerprint: str = ""
    source: str = "arrays"  # where the vectors come from, for messages

    def __post_init__(self):
        self.has_image = np.asarray(self.has_image, dtype=bool)
        n = len(self.ids)
        if not (self.text.shape[0] == self.image.shape[0] == self.has_image.shape[0] == n):
            raise ValueError(f"ItemVectors from {self.source}: ids, text, image and has_image differ in length")
        if self.text.ndim != 2 or self.text.shape != self.image.shape:
            raise ValueError(f"ItemVectors from {self.source}: text {self.text.shape} and image "
                             f"{self.image.shape} must both be [N, D]")

    @classmethod
    def from_store(cls, store, source: str = "") -> "ItemVectors":
        """Wrap a ``pipeline.features.FeatureStore`` without reading its vectors."""
        return cls(np.asarray(store.ids), store.pooled("text"), store.pooled("image"),
                   np.asarray(store.has_image, dtype=bool), dict(store.encoder),
                   store.fingerprint, source or str(store.root))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.text.shape[1])


@dataclass
class CheckedBatch:
    """A batch of rows read as float32, with what is usable in each row."""

    rows: np.ndarray  # positions in the ItemVectors
    text: np.ndarray  # [n, D] float32, unit rows where text_ok
    image: np.ndarray  # [n, D] float32, unit rows where image_ok
    text_ok: np.ndarray  # [n] bool
    image_ok: np.ndarray  # [n] bool: flagged as having an image and its vector is usable
    problems: list[str | None]  # per row: what is wrong with it, None when nothing


def read_checked(items: ItemVectors, rows: np.ndarray) -> CheckedBatch:
    rows = np.asarray(rows, dtype=np.int64)
    text, text_finite, text_nonzero = _normalise(np.asarray(items.text[rows], dtype=np.float32))
    image, image_finite, image_nonzero = _normalise(np.asarray(items.image[rows], dtype=np.float32))
    flagged = items.has_image[rows]
    text_ok = text_finite & text_nonzero
    image_ok = flagged & image_finite & image_nonzero
    problems: list[str | None] = [None] * len(rows)
    for position in np.flatnonzero(~text_ok | (flagged & ~image_ok)):
        if not text_finite[position]:
            problems[position] = TEXT_NOT_FINITE
        elif not text_nonzero[position]:
            problems[position] = TEXT_ZERO
        else:
            problems[position] = IMAGE_BROKEN
    return CheckedBatch(rows, text, image, text_ok, image_ok, problems)


def _normalise(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    finite = np.isfinite(vectors).all(axis=1)
    vectors = np.where(finite[:, None], vectors, 0.0).astype(np.float32, copy=False)
    norms = np.linalg.norm(vectors, axis=1)
    nonzero = norms > MIN_NORM
    vectors /= np.where(nonzero, norms, 1.0)[:, None]
    return vectors, finite, nonzero


def row_batches(n: int, size: int) -> Iterator[np.ndarray]:
    for start in range(0, n, size):
        yield np.arange(start, min(start + size, n))


def entity_matrix(batch: CheckedBatch, image_fill: np.ndarray) -> np.ndarray:
    """Index vectors [n, 2D] of a batch; only rows with ``text_ok`` are meaningful."""
    image = np.where(batch.image_ok[:, None], batch.image, image_fill[None, :])
    return np.ascontiguousarray(np.concatenate([batch.text, image], axis=1) / SQRT2, dtype=np.float32)


def query_matrix(batch: CheckedBatch) -> np.ndarray:
    """Query vectors [n, 2D]: mean of cosines with an image, text cosine without."""
    with_image = batch.image_ok[:, None]
    text = batch.text * np.where(with_image, 1.0 / SQRT2, SQRT2)
    image = np.where(with_image, batch.image / SQRT2, 0.0)
    return np.ascontiguousarray(np.concatenate([text, image], axis=1), dtype=np.float32)


def content_keys(items: ItemVectors, rows: np.ndarray) -> list[str]:
    """One digest per row over exactly what the index vector depends on.

    Hashing the vectors (not the store's input hashes) means any change that reaches the
    index - new text, new image, a lost image, a different encoder - changes the key. An
    image vector that is not used (``has_image`` false) does not count.
    """
    text = np.asarray(items.text[rows])
    flags = items.has_image[rows]
    image = np.where(flags[:, None], np.asarray(items.image[rows]), 0).astype(text.dtype)
    packed = np.ascontiguousarray(np.concatenate([text, image, flags[:, None].astype(text.dtype)], axis=1))
    return [hashlib.blake2b(row, digest_size=DIGEST_SIZE).hexdigest() for row in packed]


# -- the entity side as a source of index vectors (see faiss_index.VectorSource) --------------------------


@dataclass
class EntityScan:
    """One pass over a source's entities: content keys of the usable rows and the problems."""

    keys: dict[int, str]  # KB index -> content key, usable entities only
    rows: dict[int, int]  # KB index -> row in the source
    problems: list[dict]  # {kb_index, problem, action}
    image_sum: np.ndarray | None = None  # CLIP: sum of usable unit image vectors (the image-less entities' fill)


class ClipEntityVectors:
    """The entity index's vectors under ``COMBINATION_RULE``, read from the entity feature store."""

    rule = COMBINATION_RULE
    rule_version = COMBINATION_VERSION
    usable = "text vector"

    def __init__(self, items: ItemVectors):
        self.items = items
        self.source = items.source
        self.fingerprint = items.fingerprint
        self.index_dim = 2 * items.dim
        # What the vectors mean: an index built from another identity is rebuilt, never synced.
        self.identity = {"encoder": items.encoder, "dim": items.dim, "index_dim": self.index_dim,
                         "combination_rule": self.rule, "combination_version": self.rule_version}

    def __len__(self) -> int:
        return len(self.items)

    def scan(self, stored=None) -> EntityScan:
        """Content keys and problems of every row (``stored``, the index being synced, is not needed here)."""
        items = self.items
        ids = entity_ids(items.ids, items.source)
        keys, rows, problems = {}, {}, []
        image_sum = np.zeros(items.dim, dtype=np.float64)
        for batch_rows in row_batches(len(items), BATCH_ROWS):
            batch = read_checked(items, batch_rows)
            batch_keys = content_keys(items, batch_rows)
            for row, problem in zip(batch_rows, batch.problems):
                if problem is not None:
                    action = "indexed_text_only" if problem == IMAGE_BROKEN else "excluded"
                    problems.append({"kb_index": int(ids[row]), "problem": problem, "action": action})
            for position in np.flatnonzero(batch.text_ok):
                row = int(batch_rows[position])
                keys[int(ids[row])] = batch_keys[position]
                rows[int(ids[row])] = row
            image_sum += batch.image[batch.image_ok & batch.text_ok].sum(axis=0, dtype=np.float64)
        return EntityScan(keys, rows, problems, image_sum)

    def fill(self, scan: EntityScan) -> np.ndarray:
        """The frozen statistic of an index build: the normalised mean image of the usable entities."""
        norm = np.linalg.norm(scan.image_sum)
        return (scan.image_sum / norm if norm > MIN_NORM else np.zeros(self.items.dim)).astype(np.float32)

    def vectors(self, rows: np.ndarray, fill: np.ndarray) -> np.ndarray:
        return entity_matrix(read_checked(self.items, rows), fill)


def entity_ids(ids, source: str) -> np.ndarray:
    """Entity ids as int64 KB indices, each once (a MELUserError naming ``source`` otherwise)."""
    try:
        ids = np.asarray(ids).astype(np.int64)
    except (TypeError, ValueError):
        raise MELUserError(f"The entity features at {source} have ids that are not KB indices "
                           f"(integers); re-materialize entity_features.") from None
    if len(np.unique(ids)) != len(ids):
        raise MELUserError(f"The entity features at {source} list some KB index twice; "
                           f"re-materialize entity_features.")
    return ids
