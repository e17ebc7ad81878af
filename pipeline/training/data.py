"""What training and evaluation read: the two feature stores, the mentions and their FAISS candidates.

Everything comes from the lake, through `pipeline.catalog`; CLIP never runs here. Features are read row by
row from the memory-mapped feature stores (`FeatureStore.take` copies only the selected rows), so a KB of any
size costs the RAM of a batch. The training batches drawn from these inputs are in `batches.py`.

Bad input stops with a MELUserError naming the store, the ids and what is wrong: NaN/Inf in a feature row
(checked on every batch), a text without any real token, stores or index written by different encoders,
candidates naming KB indices that the entity store lacks, a split without usable mentions.

What training depends on (`Inputs.training_fingerprints`): the train and dev mentions only (ids, golds, nil
flags, the content keys of their mention-store rows, their FAISS candidate lists) and the content keys of the
entity-store rows they read (golds and candidates). Test mentions and KB entities no train/dev mention
touches are not read by training, so changing them does not retrain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import torch

from model import MMoEFeatures, NonFiniteFeatureError, check_finite_features
from model.features import nonfinite_rows
from pipeline import catalog
from pipeline.errors import MELUserError
from pipeline.features.store import FeatureStore
from pipeline.hashing import hash_strings
from pipeline.index import stored_index_identity
from pipeline.lake import Lake

NO_MENTION_FEATURES = "no row in the mention feature store"
NO_GOLD_FEATURES = "the gold entity has no row in the entity feature store"
NO_CANDIDATES_ROW = "no row in mention_candidates (re-materialize it)"
TRAINING_SPLITS = ("train", "dev")  # what training reads: train mentions, and dev mentions for model selection
NO_ROW_KEY = "-"  # the content key of an item that has no row in its store


@dataclass
class Mentions:
    """Every mention of the `mentions` table, with where its features, gold and candidates are."""

    ids: np.ndarray  # str
    split: np.ndarray  # str
    is_nil: np.ndarray  # bool
    gold_index: np.ndarray  # int64 KB index, -1 for nil
    mention_row: np.ndarray  # int64 row in the mention store, -1 when absent
    gold_row: np.ndarray  # int64 row of the gold in the entity store, -1 for nil or absent
    candidates: list[np.ndarray]  # int64 entity-store rows of the FAISS candidates, best first
    candidate_problem: list  # str | None: what the candidates stage reported for the mention

    def select(self, split: str, linkable_only: bool = True) -> np.ndarray:
        """Positions of the split's mentions (non-nil ones unless linkable_only=False)."""
        chosen = self.split == split
        if linkable_only:
            chosen &= ~self.is_nil
        return np.flatnonzero(chosen)

    def recall(self, positions: np.ndarray, cutoffs) -> dict[int, float]:
        """{n: share of `positions` whose gold is among their first n candidates} (0.0 for no positions)."""
        ranks = np.asarray([_rank_of(self.candidates[p], self.gold_row[p]) for p in positions.tolist()], dtype=float)
        return {n: float((ranks <= n).mean()) if len(ranks) else 0.0 for n in cutoffs}

    def problem_of(self, position: int) -> str | None:
        if self.mention_row[position] < 0:
            return NO_MENTION_FEATURES
        if not self.is_nil[position] and self.gold_row[position] < 0:
            return NO_GOLD_FEATURES
        return self.candidate_problem[position]


def _rank_of(candidates: np.ndarray, gold_row: int) -> float:
    """1-based rank of the gold row among the candidates; inf when absent (or no gold)."""
    hits = np.flatnonzero(candidates == gold_row) if gold_row >= 0 else []
    return float(hits[0] + 1) if len(hits) else float("inf")


@dataclass
class Inputs:
    """The opened stores and tables of one lake, checked for consistency."""

    lake: Lake
    entities: FeatureStore
    mentions_store: FeatureStore
    mentions: Mentions
    candidates_fingerprint: str
    mentions_fingerprint: str

    @property
    def dims(self) -> dict:
        return self.entities.dims

    def fingerprints(self) -> dict:
        return {"entity_store": self.entities.fingerprint, "mention_store": self.mentions_store.fingerprint,
                "mention_candidates": self.candidates_fingerprint, "mentions": self.mentions_fingerprint}

    def training_fingerprints(self) -> dict:
        """Digests of exactly what training reads (see the module docstring), in table order: the order of the
        train mentions decides the data order, so reordering them changes the digest too."""
        m = self.mentions
        positions = np.flatnonzero(np.isin(m.split, TRAINING_SPLITS))
        mention_keys = store_keys(self.mentions_store, m.mention_row[positions])
        kb = self.entities.ids
        parts = []
        for position, key in zip(positions.tolist(), mention_keys):
            parts += [m.ids[position], m.split[position], str(m.gold_index[position]), str(bool(m.is_nil[position])),
                      key, m.candidate_problem[position] or "", " ".join(kb[m.candidates[position]].tolist())]
        read = np.unique(np.concatenate([m.gold_row[positions][m.gold_row[positions] >= 0],
                                         *[m.candidates[p] for p in positions.tolist()]]).astype(np.int64))
        entity_parts = [part for pair in zip(kb[read].tolist(), store_keys(self.entities, read)) for part in pair]
        return {"train_dev_mentions": hash_strings(parts), "entities_read": hash_strings(entity_parts),
                "encoder": json.dumps(self.entities.encoder, sort_keys=True)}

    @classmethod
    def open(cls, lake: Lake) -> "Inputs":
        """Open the entity store, the mention store of the lake's description source
        (`catalog.mention_store_dir`) and the tables.

        Another description source (e.g. "none", built without descriptions, for the ablation) has a mention
        store of its own; it must come from the same encoder as the entity store and cover the same mention ids.
        """
        entities = FeatureStore.open(catalog.entity_store_dir(lake))
        mentions_store = FeatureStore.open(catalog.mention_store_dir(lake))
        check_same_encoder(entities, mentions_store, stored_index_identity(catalog.entity_index_dir(lake)))
        table = _read_table(lake, catalog.MENTIONS, ["mention_id", "split", "gold_index", "is_nil"])
        candidates = _read_table(lake, catalog.MENTION_CANDIDATES, ["mention_id", "candidates", "problem"])
        mentions = _join(table, candidates, entities, mentions_store)
        return cls(lake, entities, mentions_store, mentions,
                   lake.table_fingerprint(catalog.MENTION_CANDIDATES) or "",
                   lake.table_fingerprint(catalog.MENTIONS) or "")

    def candidates_from(self, table_name: str) -> Mentions:
        """The same mentions with the candidate lists of another candidates table (e.g. the trained index's)."""
        table = _read_table(self.lake, catalog.MENTIONS, ["mention_id", "split", "gold_index", "is_nil"])
        candidates = _read_table(self.lake, table_name, ["mention_id", "candidates", "problem"])
        return _join(table, candidates, self.entities, self.mentions_store, table_name)


def _read_table(lake: Lake, name: str, columns: list[str]):
    if not lake.has_table(name):
        raise MELUserError(f"The {name} table has not been materialized yet (no file at {lake.table_path(name)}); "
                           f"materialize {name} first.")
    return lake.read_table(name, columns=columns)


def check_same_encoder(entities: FeatureStore, mentions: FeatureStore, index_config: dict | None) -> None:
    """Mention store, entity store and entity index must come from one encoder, or scores mean nothing."""
    sources = [(f"the mention feature store at {mentions.root}", mentions.encoder)]
    if index_config is not None:
        sources.append(("the entity index (mention_candidates come from it)", index_config.get("encoder")))
    for where, encoder in sources:
        if encoder != entities.encoder:
            raise MELUserError(
                f"The entity feature store at {entities.root} was written by encoder {describe_encoder(entities.encoder)}"
                f" but {where} by {describe_encoder(encoder)} ({_differences(entities.encoder, encoder)}); "
                "re-materialize the features, entity_index and mention_candidates with one encoder.")
    if mentions.dims != entities.dims:
        raise MELUserError(f"The mention feature store at {mentions.root} has dims {mentions.dims}, the entity "
                           f"store at {entities.root} {entities.dims}; re-materialize them with one encoder.")


def describe_encoder(encoder: dict | None) -> str:
    if not encoder:
        return "(unknown)"
    return f"{encoder.get('arch', '?')} ({encoder.get('weights', '?')})"


def _differences(expected: dict, found: dict | None) -> str:
    found = found or {}
    keys = sorted(set(expected) | set(found))
    return "; ".join(f"{key}: {expected.get(key)!r} vs {found.get(key)!r}" for key in keys
                     if expected.get(key) != found.get(key))


def _join(table, candidates, entities: FeatureStore, mention_store: FeatureStore,
          table_name: str = catalog.MENTION_CANDIDATES) -> Mentions:
    ids = np.asarray(table.column("mention_id").to_pylist(), dtype=str)
    gold = np.asarray([-1 if g is None else g for g in table.column("gold_index").to_pylist()], dtype=np.int64)
    is_nil = np.asarray(table.column("is_nil").to_pylist(), dtype=bool)
    kb_row = kb_rows(entities)
    mention_row = rows_or_missing(mention_store, ids)
    gold_row = np.where((gold >= 0) & ~is_nil, kb_row.lookup(gold), -1)

    by_id = {mention_id: position for position, mention_id in
             enumerate(candidates.column("mention_id").to_pylist())}
    candidate_lists = candidates.column("candidates").to_pylist()
    candidate_problems = candidates.column("problem").to_pylist()
    rows, problems = [], []
    for mention_id in ids.tolist():
        position = by_id.get(mention_id)
        if position is None:
            rows.append(np.zeros(0, np.int64))
            problems.append(NO_CANDIDATES_ROW)
            continue
        found = np.asarray(candidate_lists[position] or [], dtype=np.int64)
        store_rows = kb_row.lookup(found)
        if (store_rows < 0).any():
            missing = found[store_rows < 0][:5].tolist()
            raise MELUserError(
                f"{table_name} lists KB indices {missing} for mention {mention_id} that the entity feature "
                f"store at {entities.root} does not hold; re-materialize the index and {table_name}.")
        rows.append(store_rows)
        problems.append(candidate_problems[position])
    return Mentions(ids, np.asarray(table.column("split").to_pylist(), dtype=str), is_nil, gold, mention_row,
                    gold_row, rows, problems)


def store_keys(store: FeatureStore, rows: np.ndarray) -> list[str]:
    """The content keys of store `rows` (NO_ROW_KEY for -1): they change iff the item's features do."""
    rows = np.asarray(rows, dtype=np.int64)
    present = rows >= 0
    found = iter(store.content_keys.take(rows[present]).to_pylist())
    return [next(found) if here else NO_ROW_KEY for here in present.tolist()]


def rows_or_missing(store: FeatureStore, ids: np.ndarray) -> np.ndarray:
    """The store row of each id, -1 where the store has none."""
    row_of = {item: row for row, item in enumerate(store.ids.tolist())}
    return np.asarray([row_of.get(item, -1) for item in ids.tolist()], dtype=np.int64)


@dataclass
class KBRows:
    """KB index -> entity store row (-1 when the entity has no features)."""

    table: np.ndarray
    kb_index: np.ndarray  # row -> KB index

    def lookup(self, kb_indices: np.ndarray) -> np.ndarray:
        kb_indices = np.asarray(kb_indices, dtype=np.int64)
        inside = (kb_indices >= 0) & (kb_indices < len(self.table))
        return np.where(inside, self.table[np.clip(kb_indices, 0, max(len(self.table) - 1, 0))], -1)


def kb_rows(entities: FeatureStore) -> KBRows:
    try:
        kb_index = entities.ids.astype(np.int64)
    except ValueError:
        raise MELUserError(f"The entity feature store at {entities.root} has ids that are not KB indices "
                           f"(e.g. {entities.ids[:3].tolist()}); re-materialize entity_features.") from None
    table = np.full(int(kb_index.max()) + 1 if len(kb_index) else 0, -1, dtype=np.int64)
    table[kb_index] = np.arange(len(kb_index))
    return KBRows(table, kb_index)


# -- features -------------------------------------------------------------------------------------------


def read_features(store: FeatureStore, rows: np.ndarray, ids, device: torch.device, reference: bool) -> MMoEFeatures:
    """Features of store `rows` on `device` (float32). NaN/Inf or an empty text in any row is a MELUserError
    naming the store and the ids (training stops; it never skips)."""
    features, problems = load_features(store, rows, device, reference)
    bad = [i for i, problem in enumerate(problems) if problem]
    if bad:
        shown = [f"{ids[i]} ({problems[i]})" for i in bad[:10]] + (["..."] if len(bad) > 10 else [])
        error = NonFiniteFeatures if all(problems[i].startswith("NaN") for i in bad) else MELUserError
        raise error(f"The feature store at {store.root} holds unusable rows: {', '.join(shown)}; "
                    "re-materialize those features or remove the items.")
    return features


def load_features(store: FeatureStore, rows: np.ndarray, device: torch.device,
                  reference: bool = False) -> tuple[MMoEFeatures, list[str | None]]:
    """Features of store `rows` on `device` (float32) and, per row, what makes it unusable (None: usable).

    For the topk gate, text positions that are padding in every row are dropped: scores are unchanged
    (padding is masked everywhere) and the matcher's cost falls with the text length. For the reference gate
    the layout stays as the published code has it: every position, no mask (it attends over padding).
    """
    batch = store.take(rows)
    if not reference:
        batch = _trim_text(batch)
    features = batch.to(device).to(dtype=torch.float32)  # float16 crosses to the device: half the bytes
    if reference:
        features.text_mask = None
    problems: list[str | None] = [None] * len(rows)
    for row in (~batch.text_mask.any(dim=1)).nonzero().flatten().tolist():
        problems[row] = "no text token"
    try:
        check_finite_features(features, "features")
    except NonFiniteFeatureError:
        for row, tensors in _nonfinite_items(features).items():
            problems[row] = f"NaN/Inf in {', '.join(tensors)}"
    return features, problems


def _trim_text(batch: MMoEFeatures) -> MMoEFeatures:
    used = batch.text_mask.any(dim=0).nonzero()
    length = int(used.max()) + 1 if len(used) else 1
    return replace(batch, text_tokens=batch.text_tokens[:, :length], text_mask=batch.text_mask[:, :length])


class NonFiniteFeatures(MELUserError):
    """NaN/Inf values in feature rows."""


def _nonfinite_items(features: MMoEFeatures) -> dict[int, list[str]]:
    """Row -> names of its tensors holding NaN/Inf (image tensors of rows without an image are not used)."""
    bad: dict[int, list[str]] = {}
    for name, tensor in features.tensors():
        if name.startswith("image_") and features.has_image is not None:
            shape = (-1,) + (1,) * (tensor.dim() - 1)
            tensor = torch.where(features.has_image.reshape(shape), tensor, torch.zeros_like(tensor))
        for row in nonfinite_rows(tensor):
            bad.setdefault(row, []).append(name)
    return bad
