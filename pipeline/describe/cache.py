"""The DuckDB cache of LLM choices: one row per (backend, model identity, prompt).

The key is a hash of the backend, the model's identity (content digest of its files
plus the settings that change scores, such as dtype), the choice version and the full
prompt text with its options. It is computed without loading any model, so a run with
every prompt cached never loads one. Rows keep the raw per-option log-likelihoods and
token counts (with and without the sentence) next to the choice, so another scoring
rule can be evaluated from the cache alone (bench/description_selection.py does).

Each `put` is one transaction: a crash loses at most the batch in flight. Concurrent runs
share the file: each operation opens it under an inter-process lock (`lake.SharedDuckDB`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from pipeline.hashing import hash_strings
from pipeline.lake import SharedDuckDB

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS choices (
    key VARCHAR PRIMARY KEY,
    backend VARCHAR NOT NULL,
    model VARCHAR NOT NULL,          -- model identity: name@content digest;settings
    chosen_index INTEGER NOT NULL,   -- into the prompt's options; the last one is "none of these"
    chosen_qid VARCHAR,              -- as first chosen (informational: QIDs are not part of the key)
    probabilities DOUBLE[] NOT NULL,
    logprob_sums DOUBLE[] NOT NULL,  -- per option, after the question about the sentence
    baseline_sums DOUBLE[] NOT NULL, -- per option, after the question without the sentence
    token_counts INTEGER[] NOT NULL,
    prompt VARCHAR NOT NULL,
    chosen_at TIMESTAMPTZ NOT NULL
);
"""

_ROW_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("backend", pa.string()),
        ("model", pa.string()),
        ("chosen_index", pa.int32()),
        ("chosen_qid", pa.string()),
        ("probabilities", pa.list_(pa.float64())),
        ("logprob_sums", pa.list_(pa.float64())),
        ("baseline_sums", pa.list_(pa.float64())),
        ("token_counts", pa.list_(pa.int32())),
        ("prompt", pa.string()),
    ]
)


@dataclass(frozen=True)
class CachedChoice:
    chosen_index: int
    probabilities: list[float]
    logprob_sums: list[float]
    baseline_sums: list[float]
    token_counts: list[int]


def choice_key(backend: str, model_identity: str, version: str, prompt_text: str) -> str:
    return hash_strings([backend, model_identity, version, prompt_text])


class ChoiceCache(SharedDuckDB):
    label = "LLM choice cache"
    schema_sql = SCHEMA_SQL

    def get_many(self, keys: list[str]) -> dict[str, CachedChoice]:
        if not keys:
            return {}
        wanted = pa.table({"key": pa.array(sorted(set(keys)), pa.string())})
        with self.connect() as con:
            con.register("wanted_keys", wanted)
            rows = con.execute(
                "SELECT key, chosen_index, probabilities, logprob_sums, baseline_sums, token_counts "
                "FROM choices JOIN wanted_keys USING (key)"
            ).fetchall()
        return {key: CachedChoice(index, list(probs), list(sums), list(baselines), list(counts))
                for key, index, probs, sums, baselines, counts in rows}

    def put_many(self, rows: list[dict]) -> None:
        """Store one batch of choices in one transaction (keys of `_ROW_SCHEMA`)."""
        if not rows:
            return
        batch = pa.Table.from_pylist(rows, schema=_ROW_SCHEMA)
        with self.connect() as con:
            con.register("new_choices", batch)
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute("INSERT OR REPLACE INTO choices SELECT *, now() FROM new_choices")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def count(self) -> int:
        with self.connect() as con:
            return con.execute("SELECT count(*) FROM choices").fetchone()[0]
