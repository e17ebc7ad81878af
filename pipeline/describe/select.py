"""The `mention_descriptions` stage: per mention, the LLM's choice among candidate descriptions.

Inputs are the `mentions` table and the `wikidata_candidates` table (one row per
mention and candidate, best rank first). A candidate without a description cannot be
offered; candidates whose descriptions read the same are offered once (the best
ranked one's QID stands for them), since a model cannot tell identical texts apart and
would split its probability between them. "None of these" is always offered.

Work is skipped at three levels:
* the whole table is reused when its fingerprint (mentions, candidates content, backend,
  model identity, choice version) matches the stored one;
* every choice is cached in DuckDB (`cache.ChoiceCache`), so a re-run makes no LLM
  call for a prompt already answered and loads no model when all are answered;
* mentions whose prompts are identical share one LLM call.

Batches are committed to the cache as they finish, so a crash loses at most one batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline import catalog
from pipeline.describe.backends import ChoiceBackend, LLMSettings, make_backend
from pipeline.describe.cache import CachedChoice, ChoiceCache, choice_key
from pipeline.describe.measure import selection_accuracy
from pipeline.describe.prompts import PROMPT_VERSION, Prompt, build_prompt
from pipeline.describe.scoring import SCORING_RULE, choose
from pipeline.errors import MELUserError
from pipeline.hashing import FileHashCache, hash_strings, table_content_hash
from pipeline.lake import Lake, StoredTable, cache_hit_rate

DESCRIPTIONS_VERSION = "1"  # bump when the table changes for the same inputs and choices
CHOICE_VERSION = f"prompt-{PROMPT_VERSION}/{SCORING_RULE}"  # part of every cache key
STATUSES = ("chosen", "none_of_these", "no_candidates")
CANDIDATE_COLUMNS = ("mention_id", "rank", "qid", "description")
MENTION_COLUMNS = ("mention_id", "split", "mention", "sentence", "gold_qid", "is_nil")

OUTPUT_SCHEMA = pa.schema(
    [
        ("mention_id", pa.string()),
        ("chosen_qid", pa.string()),  # null for "none of these" and for no candidates
        ("description", pa.string()),  # the chosen description, null likewise
        ("score", pa.float64()),  # probability of the chosen option among the offered ones; null: no candidates
        ("status", pa.string()),  # chosen | none_of_these | no_candidates
        ("num_options", pa.int32()),  # descriptions offered, not counting "none of these"
        ("backend", pa.string()),
        ("model", pa.string()),
    ]
)

log = logging.getLogger(__name__)


@dataclass
class MentionOptions:
    """One mention and the descriptions it is offered (qids[i]: the candidates behind option i)."""

    mention_id: str
    split: str
    gold_qid: str | None
    is_nil: bool
    descriptions: list[str]
    qids: list[list[str]]
    prompt: Prompt | None = None
    key: str | None = None


@dataclass(frozen=True)
class DescriptionsReport:
    reused: bool
    fingerprint: str
    stats: dict  # counts per status, cache and LLM figures, accuracy against the baselines
    tables: dict[str, StoredTable]  # catalog.MENTION_DESCRIPTIONS


def select_descriptions(
    lake: Lake,
    settings: LLMSettings,
    *,
    backend: ChoiceBackend | None = None,
    force: bool = False,
    logger=log,
) -> DescriptionsReport:
    """Write the `mention_descriptions` table, or reuse it when nothing it depends on changed.

    `backend` defaults to the one `settings` describe, loaded only if a prompt is not cached
    and closed at the end; a backend passed in is left loaded for its owner.
    """
    for name in (catalog.MENTIONS, catalog.WIKIDATA_CANDIDATES):
        if not lake.has_table(name):
            raise MELUserError(f"The {name} table has not been materialized yet (no file at "
                               f"{lake.table_path(name)}); materialize `{name}` first.")
    with choice_backend(lake, settings, backend) as (backend, identity):
        candidates = read_candidates(lake)
        fingerprint = hash_strings([DESCRIPTIONS_VERSION, lake.table_fingerprint(catalog.MENTIONS) or "",
                                    table_content_hash(candidates), backend.name, identity, CHOICE_VERSION])
        if not force and lake.table_fingerprint(catalog.MENTION_DESCRIPTIONS) == fingerprint:
            logger.info(f"Mentions, candidates and model unchanged (fingerprint {fingerprint[:12]}): "
                        "reusing the stored table.")
            # No prompt is scored: every choice comes from the stored table, a hit rate of 1.
            stats = {**lake.table_extra(catalog.MENTION_DESCRIPTIONS), "llm_calls": 0, "cache_hits": 0,
                     "prompts_scored": 0, "cache_hit_rate": 1.0}
            return _report(lake, True, fingerprint, stats)
        mentions = lake.read_table(catalog.MENTIONS, columns=list(MENTION_COLUMNS))
        table, stats = describe_mentions(lake, backend, identity, mentions, candidates, settings.batch_size, logger)
    lake.write_table(catalog.MENTION_DESCRIPTIONS, table, fingerprint, extra=stats)
    logger.info(f"Wrote {table.num_rows} mention descriptions: {stats['chosen']} chosen, "
                f"{stats['none_of_these']} none of these, {stats['no_candidates']} without candidates "
                f"({stats['llm_calls']} LLM calls, {stats['cache_hits']} cached).")
    return _report(lake, False, fingerprint, stats)


def _report(lake: Lake, reused: bool, fingerprint: str, stats: dict) -> DescriptionsReport:
    name = catalog.MENTION_DESCRIPTIONS
    return DescriptionsReport(reused, fingerprint, stats, {name: lake.stored_table(name)})


@contextlib.contextmanager
def choice_backend(lake: Lake, settings: LLMSettings, backend: ChoiceBackend | None = None):
    """(backend, model identity) for `settings`; the backend loads its model on its first uncached prompt and
    is closed at the end unless it was passed in (then it stays loaded for its owner)."""
    if not settings.export_dir:
        settings = dataclasses.replace(settings, export_dir=str(catalog.llm_export_dir(lake)))
    owned = backend is None
    backend = backend or make_backend(settings)
    try:
        yield backend, model_identity(backend, FileHashCache(lake.state_path(catalog.MODEL_HASHES)))
    finally:
        if owned:
            backend.close()


def describe_mentions(lake: Lake, backend: ChoiceBackend, identity: str, mentions: pa.Table, candidates: pa.Table,
                      batch_size: int, logger=log) -> tuple[pa.Table, dict]:
    """The description rows (OUTPUT_SCHEMA) of `mentions` (MENTION_COLUMNS) given their WikiData candidates,
    and the statistics: every prompt comes from the choice cache or is scored and cached batch by batch."""
    options, counts = gather_options(mentions, candidates)
    for item in options:
        if item.prompt is not None:
            item.key = choice_key(backend.name, identity, CHOICE_VERSION, item.prompt.key_text())
    with ChoiceCache(lake.duckdb_path(catalog.LLM_CHOICES_CACHE)) as cache:
        choices, run = choose_all(options, backend, identity, cache, batch_size, logger)
    table = output_table(options, choices, backend.name, identity)
    stats = {
        **counts,
        **Counter(table.column("status").to_pylist()),
        **run,
        "cache_hit_rate": cache_hit_rate(run["cache_hits"], run["prompts"]),
        "backend": backend.name,
        "model": identity,
        "choice_version": CHOICE_VERSION,
        "accuracy": selection_accuracy(options, choices),
    }
    stats.update({status: stats.get(status, 0) for status in STATUSES})
    return table, stats


def model_identity(backend: ChoiceBackend, hashes: FileHashCache) -> str:
    """Name, content digest of the model's files and score-changing settings; no model is loaded."""
    location = backend.location
    if location.files:
        digest = hashes.fingerprint(location.files, Path(location.path))
        hashes.save()
        return f"{location.name}@{digest[:16]};{backend.settings}"
    return f"{location.name};{backend.settings}"  # a hub name: its revision is the hub's business


def read_candidates(lake: Lake) -> pa.Table:
    table = lake.read_table(catalog.WIKIDATA_CANDIDATES)
    missing = [column for column in CANDIDATE_COLUMNS if column not in table.column_names]
    if missing:
        raise MELUserError(f"The candidates table {lake.table_path(catalog.WIKIDATA_CANDIDATES)} lacks the "
                           f"column(s) {', '.join(missing)}; re-materialize `{catalog.WIKIDATA_CANDIDATES}`.")
    return table.select(list(CANDIDATE_COLUMNS)).sort_by([("mention_id", "ascending"), ("rank", "ascending")])


def gather_options(mentions: pa.Table, candidates: pa.Table) -> tuple[list[MentionOptions], dict]:
    """Per mention, its distinct candidate descriptions in rank order, and the prompt offering them."""
    known = set(mentions.column("mention_id").to_pylist())
    by_mention: dict[str, list[dict]] = {}
    counts = Counter()
    for row in candidates.to_pylist():
        if row["mention_id"] not in known:
            counts["candidates_of_unknown_mentions"] += 1
        elif not row["qid"]:
            counts["candidates_without_qid"] += 1
        elif not (row["description"] or "").strip():
            counts["candidates_without_description"] += 1
        else:
            by_mention.setdefault(row["mention_id"], []).append(row)
    options = []
    for mention in mentions.to_pylist():
        descriptions, qids, seen = [], [], {}
        for row in by_mention.get(mention["mention_id"], []):
            text = " ".join(row["description"].split())
            same = seen.get(text.casefold())
            if same is None:
                seen[text.casefold()] = len(descriptions)
                descriptions.append(text)
                qids.append([row["qid"]])
            else:
                qids[same].append(row["qid"])
                counts["duplicate_descriptions_merged"] += 1
        item = MentionOptions(mention["mention_id"], mention["split"], mention["gold_qid"],
                              bool(mention["is_nil"]), descriptions, qids)
        if descriptions:
            item.prompt = build_prompt(mention["mention"], mention["sentence"], descriptions)
        options.append(item)
    counts["candidates_offered"] = sum(len(q) for o in options for q in o.qids)
    for name in ("candidates_of_unknown_mentions", "candidates_without_qid", "candidates_without_description",
                 "duplicate_descriptions_merged"):
        counts.setdefault(name, 0)
    return options, dict(counts)


def choose_all(options: list[MentionOptions], backend: ChoiceBackend, identity: str, cache: ChoiceCache,
               batch_size: int, logger) -> tuple[dict[str, CachedChoice], dict]:
    """Every prompt's choice: from the cache, else scored in batches that are committed one by one."""
    prompts = {item.key: item for item in options if item.key is not None}
    choices = cache.get_many(list(prompts))
    # Shortest first, so that a batch holds prompts of similar length and pads little.
    todo = sorted((key for key in prompts if key not in choices), key=lambda key: len(prompts[key].prompt.key_text()))
    run = {"prompts": len(prompts), "cache_hits": len(prompts) - len(todo), "prompts_scored": 0,
           "llm_calls": 0, "model_load_seconds": 0.0, "scoring_seconds": 0.0}
    if todo:
        logger.info(f"{len(todo)} of {len(prompts)} distinct prompts are not cached: scoring them with "
                    f"{backend.name} ({identity}).")
    scoring_started, last_report = None, time.monotonic()
    for start in range(0, len(todo), batch_size):
        keys = todo[start : start + batch_size]
        calls_before = backend.calls
        batch_started = time.monotonic()
        scores = backend.score([prompts[key].prompt for key in keys])
        if scoring_started is None:  # the first call also loads the model: time it apart
            scoring_started = batch_started + backend.load_seconds
        run["llm_calls"] += backend.calls - calls_before
        rows = []
        for key, score in zip(keys, scores):
            choice = choose(score)
            item = prompts[key]
            choices[key] = CachedChoice(choice.index, choice.probabilities, list(score.logprob_sums),
                                        list(score.baseline_sums), list(score.token_counts))
            chosen_qid = item.qids[choice.index][0] if choice.index < len(item.qids) else None
            rows.append(dict(key=key, backend=backend.name, model=identity, chosen_index=choice.index,
                             chosen_qid=chosen_qid, probabilities=choice.probabilities,
                             logprob_sums=list(score.logprob_sums), baseline_sums=list(score.baseline_sums),
                             token_counts=list(score.token_counts),
                             prompt=item.prompt.key_text()))
        cache.put_many(rows)
        run["prompts_scored"] += len(keys)
        if time.monotonic() - last_report > 30 or start + batch_size >= len(todo):
            last_report = time.monotonic()
            rate = run["prompts_scored"] / max(last_report - scoring_started, 1e-9)
            logger.info(f"Scored {run['prompts_scored']}/{len(todo)} prompts ({rate:.2f} prompts/s).")
    if scoring_started is not None:
        run["model_load_seconds"] = round(backend.load_seconds, 3)
        run["scoring_seconds"] = round(time.monotonic() - scoring_started, 3)
        run["prompts_per_second"] = round(run["prompts_scored"] / max(run["scoring_seconds"], 1e-9), 3)
    return choices, run


def output_table(options: list[MentionOptions], choices: dict[str, CachedChoice], backend: str,
                 identity: str) -> pa.Table:
    rows = []
    for item in options:
        row = dict(mention_id=item.mention_id, chosen_qid=None, description=None, score=None,
                   num_options=len(item.descriptions), backend=backend, model=identity)
        if item.key is None:
            row["status"] = "no_candidates"
        else:
            choice = choices[item.key]
            row["score"] = choice.probabilities[choice.chosen_index]
            if choice.chosen_index < len(item.descriptions):
                row.update(status="chosen", chosen_qid=item.qids[choice.chosen_index][0],
                           description=item.descriptions[choice.chosen_index])
            else:
                row["status"] = "none_of_these"
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)
