"""Link one inbox file with the current trained model, without retraining: the `links` table, partition by
partition.

The stages of the pipeline, applied to the file's mentions alone and reusing every cache:
WikiData candidates (the lookup cache) -> the LLM's description choice (the choice cache) -> CLIP features
(a content-addressed store per partition, `features/inbox/<key>`) -> FAISS top-K from the trained retrieval
index (the model's own vectors, `pipeline.training.retrieval`) -> MMoE reranking with the model in
`mmoe/current.json`: per mention one FAISS query and one rerank of K, never the matcher over the whole KB.
Mentions get their text the way the training mentions got theirs (the description source recorded in the
main mention store), so the model sees what it was trained on.

Work is skipped at two levels. A partition whose inputs are unchanged (file content, model, index, encoder,
settings) is reused whole. Otherwise each mention has a link key, hash(model, its features, its candidates
and their index content keys, K): after a KB change only the mentions whose candidates changed are
reranked, the others keep their stored row.

Every record of the file has a row: `linked`, `unscored` (no usable features or no candidates; the problem
says why) or `rejected` (not a usable record; the reason code as in the quarantine). Mentions whose answer
is a KB QID get their gold rank and count towards the accuracy; the others are linked all the same.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline import catalog
from pipeline.describe.backends import LLMSettings
from pipeline.describe.select import choice_backend, describe_mentions
from pipeline.errors import MELUserError
from pipeline.features import EncoderSpec, FeatureStore, mention_items_of
from pipeline.hashing import hash_strings
from pipeline.index import EntityIndex, IndexSettings, check_compatible, search_mentions
from pipeline.lake import Lake, StoredTable
from pipeline.linking.inbox import InboxBatch, read_inbox_file
from pipeline.linking.links_table import LINKS_SCHEMA, STATUSES, accuracy, running_accuracy, stored_rows
from pipeline.training.data import Mentions, kb_rows, rows_or_missing, store_keys
from pipeline.training.retrieval import TrainedMentionQueries, open_retrieval_index
from pipeline.training.scoring import TOP_SAVED, rank_mentions
from pipeline.training.settings import TrainingSettings
from pipeline.training.trained import current_model, load_matcher, model_identity
from pipeline.wikidata.candidates import retrieve_candidates
from pipeline.wikidata.settings import WikidataSettings
from pipeline.wikidata.stage import open_searcher

LINK_VERSION = "1"  # bump when the rows change for the same inputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkSettings:
    """Linking runs every stage on the file's mentions, each under its own settings."""

    wikidata: WikidataSettings = WikidataSettings()
    llm: LLMSettings = LLMSettings()
    encoder: EncoderSpec = EncoderSpec()  # must be the encoder of the entity features
    index: IndexSettings = IndexSettings()  # candidates_per_mention: FAISS candidates per mention
    training: TrainingSettings = TrainingSettings()  # rerank_k, device, eval_batch_size; the model keeps its config


@dataclass
class LinkReport:
    partition: str
    reused: bool
    fingerprint: str
    table: StoredTable  # the partition's links as written (or kept)
    stats: dict = field(default_factory=dict)
    running: dict = field(default_factory=dict)  # accuracy over every linked partition (running_accuracy)


def link_inbox_file(lake: Lake, settings: LinkSettings, dataset_dir: Path | str, key: str, *,
                    logger=log) -> LinkReport:
    """Link the inbox file `key` and write `tables/links/<key>.parquet`, or reuse it when nothing changed."""
    started = time.perf_counter()
    batch = read_inbox_file(lake, dataset_dir, key)
    model = current_model(lake)
    index = open_retrieval_index(lake, model)
    entities = FeatureStore.open(catalog.entity_store_dir(lake))
    description_source = _trained_description_source(lake)
    encoder = settings.encoder.identity()
    if encoder != entities.encoder:
        raise MELUserError(f"The configured encoder ({encoder.get('arch')}, {encoder.get('weights')}) is not the one "
                           f"the entity features were made with ({entities.encoder.get('arch')}, "
                           f"{entities.encoder.get('weights')}); re-embed the KB (refresh_kb_features) first.")
    state = {"model": model["fingerprint"], "index": index.fingerprint}
    fingerprint = hash_strings([LINK_VERSION, batch.file_hash, json.dumps(state, sort_keys=True),
                                json.dumps(encoder, sort_keys=True), description_source,
                                str(settings.index.candidates_per_mention), str(settings.training.rerank_k),
                                str(settings.index.nprobe)])
    name = catalog.links_table(key)
    if lake.table_fingerprint(name) == fingerprint:
        logger.info(f"{key}: file, model and index unchanged (fingerprint {fingerprint[:12]}): reusing its links; "
                    "nothing was computed.")
        return LinkReport(key, True, fingerprint, lake.stored_table(name), lake.table_extra(name)["stats"],
                          running_accuracy(lake))

    stats: dict = {"records": batch.records, "mentions": batch.mentions.num_rows, "rejected": len(batch.rejected)}
    logger.info(f"{key}: {batch.records} records, {batch.mentions.num_rows} usable mentions, "
                f"{len(batch.rejected)} rejected.")
    descriptions = _descriptions(lake, dataset_dir, batch, settings, description_source, stats, logger)
    store = _features(lake, dataset_dir, batch, descriptions, settings, stats, logger)
    device = settings.training.torch_device()
    matcher = load_matcher(model, None, entities, device, logger)
    found = _candidates(index, TrainedMentionQueries(matcher, model_identity(model), store, device), batch, settings,
                        stats, logger)
    rows = _rerank(lake, batch, matcher, model, index, entities, store, found, descriptions, settings, stats, logger)
    rows += _rejected_rows(batch)
    common = dict(partition=key, model=model["fingerprint"], checkpoint=model["checkpoint"],
                  encoder=json.dumps(encoder, sort_keys=True), index=index.fingerprint,
                  source_file=f"inbox/{key}", file_hash=batch.file_hash,
                  linked_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    table = pa.Table.from_pylist([{**common, **row} for row in rows], schema=LINKS_SCHEMA)
    stats.update(accuracy(table.column("correct").to_pylist()), seconds=round(time.perf_counter() - started, 3),
                 statuses={status: table.column("status").to_pylist().count(status) for status in STATUSES})
    path = lake.write_table(name, table, fingerprint, extra={"stats": stats, "state": state,
                                                             "file_hash": batch.file_hash})
    logger.info(f"{key}: wrote {table.num_rows} link rows ({stats['statuses']}) to {path} in {stats['seconds']} s.")
    return LinkReport(key, False, fingerprint, lake.stored_table(name), stats, running_accuracy(lake))


def _trained_description_source(lake: Lake) -> str:
    """The description source the lake's mention store resolved to: the model was trained on those texts."""
    store = FeatureStore.open(catalog.mention_store_dir(lake))
    return store.recipe.get("resolved_description_source", "dataset")


# -- the stages, on the file's mentions ---------------------------------------------------------------------


def _descriptions(lake, dataset_dir, batch: InboxBatch, settings: LinkSettings, source: str, stats: dict,
                  logger) -> list[str | None]:
    """Per mention row, the description its text gets: the LLM's choice, the record's own, or none."""
    mentions = batch.mentions
    if source == "dataset":
        return mentions.column("description").to_pylist()
    if source != "llm" or mentions.num_rows == 0:
        return [None] * mentions.num_rows
    with open_searcher(settings.wikidata, lake, lambda: Path(dataset_dir), logger) as searcher:
        found = retrieve_candidates(mentions.select(["mention_id", "mention"]), searcher,
                                    max_candidates=settings.wikidata.max_candidates,
                                    language=settings.wikidata.language, logger=logger)
    stats["wikidata"] = {key: found.stats.get(key, 0) for key in (
        "mentions_with_candidates", "distinct_searches", "cache_hits", "looked_up", "http_requests", "failures")}
    with choice_backend(lake, settings.llm) as (backend, identity):
        table, described = describe_mentions(lake, backend, identity, mentions, found.table,
                                             settings.llm.batch_size, logger)
    stats["descriptions"] = {key: described.get(key, 0) for key in (
        "prompts", "cache_hits", "prompts_scored", "llm_calls", "chosen", "none_of_these", "no_candidates")}
    by_id = dict(zip(table.column("mention_id").to_pylist(), table.column("description").to_pylist()))
    return [by_id.get(mention_id) for mention_id in mentions.column("mention_id").to_pylist()]


def _features(lake, dataset_dir, batch: InboxBatch, descriptions, settings: LinkSettings, stats: dict,
              logger) -> FeatureStore:
    from pipeline.features import extract_features  # open_clip loads on first use

    items = mention_items_of(batch.mentions, Path(dataset_dir).resolve(), descriptions)
    items.recipe.update(source=f"inbox/{batch.key}")
    report = extract_features(items, catalog.inbox_store_dir(lake, batch.key), settings.encoder, logger=logger)
    stats["features"] = {"encoded": report.encoded, "reused": report.reused}
    return report.store


@dataclass
class _Found:
    candidates: list[np.ndarray]  # KB indices per mention row, best first
    problems: list[str | None]


def _candidates(index: EntityIndex, queries: TrainedMentionQueries, batch: InboxBatch, settings: LinkSettings,
                stats: dict, logger) -> _Found:
    """One FAISS query per mention against the trained index, with the model's own query vector."""
    check_compatible(index, queries)
    k = min(settings.index.candidates_per_mention, len(index))
    candidates, _, problems, searched = search_mentions(
        index, queries, batch.mentions.column("mention_id").to_pylist(), k, settings.index,
        settings.index.gpu(), logger)
    stats["candidates"] = {"searched": searched, "k": k}
    return _Found([np.asarray(c, dtype=np.int64) for c in candidates], problems)


def _rerank(lake, batch: InboxBatch, matcher, model: dict, index: EntityIndex, entities: FeatureStore,
            store: FeatureStore, found: _Found, descriptions, settings: LinkSettings, stats: dict,
            logger) -> list[dict]:
    """One row per usable mention: stored rows whose link key is unchanged, the others reranked now."""
    training = settings.training
    k = training.rerank_k
    mention_ids = batch.mentions.column("mention_id").to_pylist()
    mention_rows = rows_or_missing(store, np.asarray(mention_ids, dtype=str))
    columns = batch.mentions.to_pydict()
    golds = [gold if labelled else None for gold, labelled in zip(columns["gold_qid"], batch.labelled)]
    # What a row is made of: the model, the mention's features (text and image), its record, and its candidates
    # with their index content keys.
    keys = [hash_strings([model["fingerprint"], str(k), feature_key, golds[i] or "",
                          str(columns["record_index"][i]), *batch.notes.get(mention_id, []),
                          *[f"{c}={index.keys.get(int(c), '')}" for c in found.candidates[i][:k]]])
            for i, (mention_id, feature_key) in enumerate(zip(mention_ids, store_keys(store, mention_rows)))]
    stored = stored_rows(lake, batch.key)
    todo = [i for i, (mention_id, key) in enumerate(zip(mention_ids, keys))
            if stored.get(mention_id, {}).get("link_key") != key]
    stats["rerank"] = {"reranked": len(todo), "reused": len(mention_ids) - len(todo), "k": k}
    if len(mention_ids) - len(todo):
        logger.info(f"{batch.key}: {len(mention_ids) - len(todo)} mentions keep their links (same features, "
                    f"candidates and model); reranking {len(todo)}.")
    fresh = _rank(batch, matcher, entities, store, mention_rows, found, todo, settings) if todo else {}
    names = _entity_names(lake)
    rows = []
    for i, mention_id in enumerate(mention_ids):
        if i not in fresh:
            rows.append({name: stored[mention_id][name] for name in _MENTION_FIELDS})
            continue
        ranking = fresh[i]
        notes = batch.notes.get(mention_id, [])
        problem = "; ".join([p for p in (ranking["problem"],) if p] + notes) or None
        gold_qid = golds[i]
        top = [dict(kb_index=int(kb), qid=names.get(int(kb), (None, None))[0],
                    name=names.get(int(kb), (None, None))[1], **scores) for kb, scores in ranking["top"]]
        rows.append(dict(
            mention_id=mention_id, record_id=columns["record_id"][i], record_index=columns["record_index"][i],
            status="linked" if top else "unscored", problem=problem, mention=columns["mention"][i],
            sentence=columns["sentence"][i], description=descriptions[i], gold_qid=gold_qid,
            gold_rank=ranking["gold_rank"] if gold_qid else None,
            correct=(bool(top) and top[0]["qid"] == gold_qid) if gold_qid else None,
            top_entities=top, routing=ranking["routing"], link_key=keys[i]))
    return rows


_MENTION_FIELDS = ("mention_id", "record_id", "record_index", "status", "problem", "mention", "sentence",
                   "description", "gold_qid", "gold_rank", "correct", "top_entities", "routing", "link_key")


def _rank(batch: InboxBatch, matcher, entities: FeatureStore, store: FeatureStore, mention_rows: np.ndarray,
          found: _Found, todo: list[int], settings: LinkSettings) -> dict[int, dict]:
    """Rerank the FAISS candidates of the mention rows `todo` with the trained matcher."""
    training = settings.training
    device = training.torch_device()
    kb_row = kb_rows(entities)
    mention_ids = np.asarray(batch.mentions.column("mention_id").to_pylist(), dtype=str)
    gold = np.asarray([g if g is not None and labelled else -1 for g, labelled in
                       zip(batch.mentions.column("gold_index").to_pylist(), batch.labelled)], dtype=np.int64)
    candidate_rows, problems = [], []
    for candidates, problem in zip(found.candidates, found.problems):
        rows = kb_row.lookup(candidates)
        if (rows < 0).any():  # the entity store moved on since the index was read (a re-embedding finished)
            problem = problem or f"{int((rows < 0).sum())} candidates have no entity features; re-link this file"
        candidate_rows.append(rows[rows >= 0])
        problems.append(problem)
    mentions = Mentions(
        ids=mention_ids, split=np.full(len(mention_ids), "inbox"), is_nil=gold < 0, gold_index=gold,
        mention_row=mention_rows,
        gold_row=np.where(gold >= 0, kb_row.lookup(gold), -1), candidates=candidate_rows,
        candidate_problem=problems)
    ranking = rank_mentions(matcher, mentions, store, entities, np.asarray(todo, dtype=np.int64), device,
                            training.rerank_k, batch_size=training.eval_batch_size)
    kb_index = kb_row.kb_index
    out = {}
    for i, position in enumerate(ranking.positions.tolist()):
        top_rows = ranking.top_rows[i][:TOP_SAVED]
        unit = {name: ranking.top_units.get(name) for name in ("text", "image", "cross")}
        top = []
        for j, row in enumerate(top_rows.tolist()):
            top.append((kb_index[row], {
                "score": float(ranking.top_scores[i][j]),
                **{f"{name}_score": (float(values[i][j]) if values is not None and values[i] is not None else None)
                   for name, values in unit.items()}}))
        out[position] = {"top": top, "gold_rank": int(ranking.gold_rank[i]) or None,
                         "routing": ranking.routing[i], "problem": ranking.problems[i]}
    return out


def _entity_names(lake: Lake) -> dict[int, tuple[str, str]]:
    """KB index -> (QID, name), for the rows a person reads."""
    table = lake.read_table(catalog.ENTITIES, columns=["kb_index", "qid", "name"])
    return {int(k): (q, n) for k, q, n in zip(*(table.column(c).to_pylist() for c in ("kb_index", "qid", "name")))}


def _rejected_rows(batch: InboxBatch) -> list[dict]:
    return [dict(mention_id=f"{batch.key}:{row['record_id']}" if row["record_id"] is not None else None,
                 record_id=row["record_id"], record_index=row["record_index"], status="rejected",
                 problem=f"{row['reason_code']}: {row['reason']}", top_entities=[])
            for row in batch.rejected]



