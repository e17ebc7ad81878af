"""Checks of the retrieval stage's outputs against its inputs, for the asset checks.

``check_index_against_features``: the entity index, the entity features and the mention features must come
from one encoder (the same identity dict, the same dimension), or query and index vectors live in different
spaces and every score is noise; and the index must hold every usable entity of the entity store with the
vectors the store holds now (a stale index misses new or re-described entities).

``recall_floor``: candidate recall per split against a floor. Candidate recall caps linking accuracy: a
mention whose gold entity is not among its candidates cannot be linked by any reranker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.index.candidates import identity_text
from pipeline.index.faiss_index import EntityIndex
from pipeline.index.vectors import ClipEntityVectors, ItemVectors

EXAMPLES = 10


@dataclass
class IndexCheck:
    encoders: dict[str, dict | None]  # index / entity_features / mention_features -> identity (None: no store)
    dims: dict[str, int | None]
    usable_entities: int
    indexed_entities: int
    missing: list[int] = field(default_factory=list)  # usable in the store, not in the index
    outdated: list[int] = field(default_factory=list)  # indexed with other vectors than the store holds now
    extra: list[int] = field(default_factory=list)  # in the index, not usable (or gone) in the store
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def check_index_against_features(index: EntityIndex, entities: ItemVectors,
                                 mentions: ItemVectors | None) -> IndexCheck:
    stores = {"entity_features": entities, "mention_features": mentions}
    encoders = {"index": index.config["encoder"], **{name: s.encoder if s else None for name, s in stores.items()}}
    dims = {"index": index.config["dim"], **{name: s.dim if s else None for name, s in stores.items()}}
    scan = ClipEntityVectors(entities).scan()
    check = IndexCheck(encoders, dims, usable_entities=len(scan.keys), indexed_entities=len(index))
    for name, items in stores.items():
        if items is None:
            continue
        if items.encoder != encoders["index"]:
            check.problems.append(f"{name} at {items.source} come from encoder {identity_text(items.encoder)}, "
                                  f"the entity index from {identity_text(encoders['index'])}")
        elif items.dim != dims["index"]:
            check.problems.append(f"{name} at {items.source} have dimension {items.dim}, the index {dims['index']}")
    check.missing = sorted(scan.keys.keys() - index.keys.keys())
    check.extra = sorted(index.keys.keys() - scan.keys.keys())
    check.outdated = sorted(i for i in scan.keys.keys() & index.keys.keys() if scan.keys[i] != index.keys[i])
    for label, ids in (("usable entities are not in the index", check.missing),
                       ("entities are indexed with older vectors than the store holds", check.outdated),
                       ("indexed entities are not usable in the store any more", check.extra)):
        if ids:
            check.problems.append(f"{len(ids)} {label} (KB indices {', '.join(map(str, ids[:EXAMPLES]))}"
                                  f"{' ...' if len(ids) > EXAMPLES else ''})")
    return check


@dataclass
class RecallFloor:
    cutoff: int  # recall@cutoff is compared: 100, or K when K < 100
    floor: float
    recall: dict[str, float]  # split -> recall@cutoff, splits with gold mentions only
    below: dict[str, float]  # the splits under the floor

    @property
    def passed(self) -> bool:
        return not self.below


def recall_floor(recall: dict[str, dict], k: int, floor: float, at: int = 100) -> RecallFloor:
    """Compare recall@min(at, K) of every split (``recall_by_split``'s output) with ``floor``."""
    cutoff = min(at, k)
    values = {split: row[f"recall@{cutoff}"] for split, row in recall.items()
              if row.get(f"recall@{cutoff}") is not None}
    return RecallFloor(cutoff, floor, values, {split: value for split, value in values.items() if value < floor})
