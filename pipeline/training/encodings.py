"""Entity encodings computed once per evaluation, packed in float16 on the device.

In topk mode an entity's encoding depends on that entity alone, so each needed entity is encoded once per
evaluation (`EncodedEntities`: the union of the candidates, or the whole KB) and packed in float16 on the
device, text token axis at the store's length; reranking gathers [M, K] encodings from it and scoring the full
KB walks it in chunks (`scoring.py`). Both paths see the same encodings, so they give a pair the same score.
float16 halves the memory (about 10.7k values per entity at ViT-B-32 widths, hidden 96: 2.3 GB for 110k
entities, against 13-20 GB of fp32 token states in the public code); pair scores are computed in float32 and
move by about 1e-3 relative. Encoding dominates the cost (a few hundred MFLOP per entity at ViT-B-32 widths,
against about one for scoring a pair), which is why it is done once, not per mention.

Reference mode encodes in the public evaluation's chunks (`REFERENCE_ENTITY_CHUNK` entities,
`REFERENCE_MENTION_CHUNK` mentions), since its gate normalises over the batch.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from model import Encoding, MMoEMatcher
from pipeline.features.store import FeatureStore
from pipeline.training.data import read_features

ENCODE_BATCH = 256  # entities per encoding call (topk)
REFERENCE_ENTITY_CHUNK = 6000  # the public evaluation's chunking (reference mode)
REFERENCE_MENTION_CHUNK = 20


class EncodedEntities:
    """Encodings of selected entity-store rows, packed along one batch axis (float16, on the device)."""

    def __init__(self, encoding: Encoding | None, rows: np.ndarray, store_size: int):
        self.encoding = encoding
        self.rows = rows
        self.column = np.full(store_size, -1, dtype=np.int64)
        self.column[rows] = np.arange(len(rows))

    def __len__(self) -> int:
        return len(self.rows)

    def gather(self, store_rows: np.ndarray) -> Encoding:
        """Encodings of `store_rows` (any shape) as float32, batch shape = store_rows.shape."""
        columns = self.column[store_rows]
        if (columns < 0).any():
            raise ValueError("gather() asked for entity rows that were not encoded")
        columns = torch.as_tensor(columns, device=self.encoding.aux_loss.device)
        return _as_float(self.encoding.map_batch(lambda t: t[columns]))

    def chunks(self, size: int) -> Iterator[tuple[int, Encoding]]:
        for start in range(0, len(self.rows), size):
            yield start, _as_float(self.encoding.map_batch(lambda t: t[start:start + size]))

    @classmethod
    def build(cls, matcher: MMoEMatcher, store: FeatureStore, rows: np.ndarray, device: torch.device,
              batch_size: int = ENCODE_BATCH) -> "EncodedEntities":
        """Encode store `rows` (sorted, so the memory-mapped store is read front to back).

        The packed buffers are allocated once, at the store's text length, and filled chunk by chunk:
        collecting chunks and concatenating them would hold everything twice and leave the heap fragmented
        between the chunk-sized temporaries.
        """
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        reference = matcher.reference_mode
        batch_size = REFERENCE_ENTITY_CHUNK if reference else batch_size
        packed = None
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                features = read_features(store, chunk, store.ids[chunk], device, reference)
                encoded = matcher.encode_entities(features)
                if packed is None:
                    packed = _allocate(encoded, len(rows), store.dims["L"])
                _copy_into(packed, encoded, start)
        return cls(packed, rows, len(store))


def _as_float(encoding: Encoding) -> Encoding:
    return encoding.map_batch(lambda t: t.float() if t.is_floating_point() else t)


def _allocate(like: Encoding, size: int, text_length: int) -> Encoding:
    """Empty float16 encodings of `size` items shaped as `like`, the text token axis `text_length` long."""

    def empty(name: str, t: torch.Tensor | None, text: bool) -> torch.Tensor | None:
        if t is None:
            return None
        shape = [size, *t.shape[1:]]
        if text and name in ("routed_tokens", "mask"):
            shape[1] = text_length  # padding: zero states, mask False
        return torch.zeros(shape, dtype=torch.float16 if t.is_floating_point() else t.dtype, device=t.device)

    def group(part, text=False):
        return None if part is None else type(part)(*(empty(n, t, text) for n, t in zip(part._fields, part)))

    return Encoding(group(like.text, text=True), group(like.image), group(like.cross), like.aux_loss, None)


def _copy_into(packed: Encoding, part: Encoding, start: int) -> None:
    for target, source in ((packed.text, part.text), (packed.image, part.image), (packed.cross, part.cross)):
        if target is None:
            continue
        for buffer, values in zip(target, source):
            if buffer is not None:
                buffer[start:start + values.shape[0], :values.shape[1]] = values
