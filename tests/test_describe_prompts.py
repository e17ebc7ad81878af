"""The prompt builder, the choice rule and the choice cache: everything that needs no model."""

import subprocess
import sys
import textwrap

import pytest

from pipeline.describe.backends import LLMSettings, locate_model
from pipeline.describe.cache import ChoiceCache, choice_key
from pipeline.describe.prompts import (
    MAX_DESCRIPTION_CHARS,
    MAX_SENTENCE_CHARS,
    NO_SENTENCE,
    NONE_OF_THESE,
    Prompt,
    build_prompt,
)
from pipeline.describe.scoring import RULES, OptionScores, choose
from pipeline.errors import MELUserError


def test_prompt_asks_about_the_mention_and_offers_none_of_these_last():
    prompt = build_prompt("Jordan", "Jordan scored 40 points.", ["American basketball player", "country in Asia"])

    assert prompt.options == ("American basketball player", "country in Asia", NONE_OF_THESE)
    assert prompt.none_index == 2
    [(system_role, _), (user_role, question)] = prompt.question
    assert (system_role, user_role) == ("system", "user")
    assert question == 'Sentence: Jordan scored 40 points.\nWhat is "Jordan" in this sentence?'
    assert prompt.reply_start == "Jordan is a"


def test_a_mention_without_a_mention_string_asks_what_the_sentence_names():
    prompt = build_prompt("", "The universe is expanding.", ["totality of space and time"])

    assert prompt.question[1][1] == "Sentence: The universe is expanding.\nWhat is the thing named in this sentence?"
    assert prompt.reply_start == "It is a"


def test_the_baseline_asks_the_same_question_without_the_sentence():
    prompt = build_prompt("Jordan", "Jordan scored 40 points.", ["American basketball player"])

    question, baseline = prompt.question[1][1], prompt.baseline[1][1]

    assert "scored" not in baseline and f"Sentence: {NO_SENTENCE}" in baseline
    assert baseline.replace(f"Sentence: {NO_SENTENCE}", "Sentence: Jordan scored 40 points.") == question
    assert prompt.baseline[0] == prompt.question[0]


def test_a_long_sentence_is_clipped_around_the_mention():
    sentence = "filler words " * 60 + "Jordan scored 40 points" + " more filler" * 60

    prompt = build_prompt("Jordan", sentence, ["basketball player"])

    question = prompt.question[1][1]
    shown = question.split("\n")[0].removeprefix("Sentence: ")
    assert "Jordan scored 40 points" in shown
    assert shown.startswith("…") and shown.endswith("…")
    assert len(shown) <= MAX_SENTENCE_CHARS + 2


def test_a_long_description_is_cut_at_a_word_boundary():
    description = "a very long description " * 20

    [option, _] = build_prompt("x", "x.", [description]).options

    assert len(option) <= MAX_DESCRIPTION_CHARS + 1 and option.endswith("description…")


def test_prompt_round_trips_through_json_and_its_key_text_sees_every_option():
    prompt = build_prompt("Jordan", "Jordan scored.", ["basketball player", "country"])
    other = build_prompt("Jordan", "Jordan scored.", ["basketball player", "river"])

    assert Prompt.from_json(prompt.to_json()) == prompt
    assert prompt.key_text() != other.key_text()
    assert choice_key("transformers", "m@1", "v", prompt.key_text()) != choice_key(
        "vllm", "m@1", "v", prompt.key_text())


def test_choice_is_always_an_offered_option_with_probabilities_summing_to_one():
    scores = OptionScores(logprob_sums=[-40.0, -3.0, -900.0], baseline_sums=[-50.0, -2.0, -800.0],
                          token_counts=[8, 2, 3])

    for rule in RULES:
        choice = choose(scores, rule)
        assert 0 <= choice.index < 3
        assert sum(choice.probabilities) == pytest.approx(1.0)
        assert choice.probabilities[choice.index] == max(choice.probabilities)


def test_pmi_prefers_the_option_the_sentence_makes_more_likely():
    # option 0 is unlikely in itself but the sentence raises it by 6 nats; option 1 is likely anyway
    scores = OptionScores(logprob_sums=[-9.0, -4.0], baseline_sums=[-15.0, -4.5], token_counts=[4, 2])

    assert choose(scores, "pmi").index == 0
    assert choose(scores, "sum").index == 1 and choose(scores, "mean").index == 1


def test_mean_rule_does_not_punish_a_longer_option_for_its_length():
    # 10 likely tokens (-0.5 each) against 1 less likely token (-2.0)
    scores = OptionScores(logprob_sums=[-5.0, -2.0], baseline_sums=[0.0, 0.0], token_counts=[10, 1])

    assert choose(scores, "mean").index == 0
    assert choose(scores, "sum").index == 1


def test_cache_keeps_choices_across_connections(tmp_path):
    row = dict(key="k1", backend="transformers", model="m@1", chosen_index=1, chosen_qid="Q2",
               probabilities=[0.2, 0.7, 0.1], logprob_sums=[-3.0, -1.0, -4.0], baseline_sums=[-2.0, -3.0, -4.0],
               token_counts=[2, 2, 3],
               prompt="{}")
    with ChoiceCache(tmp_path / "llm_choices.duckdb") as cache:
        cache.put_many([row])

    with ChoiceCache(tmp_path / "llm_choices.duckdb") as cache:
        found = cache.get_many(["k1", "missing"])
        assert cache.count() == 1

    assert list(found) == ["k1"]
    assert found["k1"].chosen_index == 1 and found["k1"].probabilities == [0.2, 0.7, 0.1]
    assert found["k1"].token_counts == [2, 2, 3]


def test_cache_in_use_by_another_process_is_one_sentence(tmp_path):
    path = tmp_path / "llm_choices.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, sys, time
            con = duckdb.connect({str(path)!r})
            print("holding", flush=True)
            sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(MELUserError, match="is in use by another process"):
            ChoiceCache(path).count()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_missing_model_path_names_backend_and_path(tmp_path):
    missing = tmp_path / "no-such-model"

    for backend in ("transformers", "vllm"):
        with pytest.raises(MELUserError) as raised:
            locate_model(LLMSettings(backend=backend, model_path=str(missing)))
        assert str(raised.value) == f"The {backend} backend cannot load model {missing}: no such file or folder."


def test_unknown_backend_and_bad_batch_size_are_named():
    with pytest.raises(MELUserError, match="backend 'llama' is not one of transformers, vllm"):
        LLMSettings(backend="llama")
    with pytest.raises(MELUserError, match="batch_size must be at least 1"):
        LLMSettings(batch_size=0)
