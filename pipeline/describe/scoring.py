"""The choice rule, shared by every backend (and importable where only vLLM is installed).

Options are scored, never generated, so an answer outside them cannot occur: each
option's log-likelihood as the model's reply is measured twice, after the question
about the sentence and after the same question with the sentence left out (the
baseline). The rule in use, "pmi", scores an option by how much the sentence raises
its log-likelihood (pointwise mutual information, Holtzman et al. 2021, "Surface Form
Competition"); softmax over the offered options gives probabilities that sum to 1, and
the argmax is the choice. Without the baseline a 135M model mostly rewards options that
are likely anyway (short, frequent words, the first one listed); on the demo dataset
"pmi" beat per-token "mean" and "sum" of the plain log-likelihoods by a wide margin
(bench/description_selection.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.describe.prompts import EncodedPrompt, Prompt, encode_prompt

SCORING_RULE = "pmi"
RULES = ("pmi", "mean", "sum")  # the others are kept for measuring against


@dataclass(frozen=True)
class OptionLikelihoods:
    """Per option of one encoded prompt: summed token log-probabilities and token counts."""

    sums: list[float]
    counts: list[int]


@dataclass(frozen=True)
class OptionScores:
    """What a backend measured for one prompt, per option: summed token log-probs after the
    question and after the baseline question, and the number of option tokens."""

    logprob_sums: list[float]
    baseline_sums: list[float]
    token_counts: list[int]


def score_prompts(prompts: list[Prompt], tokenizer, likelihoods: Callable[[list[EncodedPrompt]], list],
                  baseline_memo: dict[str, OptionLikelihoods]) -> list[OptionScores]:
    """Every prompt's question, and each distinct baseline once per run, through `likelihoods`.

    A baseline depends on the mention text and the options only, and mention strings
    repeat (900 demo mentions have 140 distinct ones), so the memo saves most of them.
    """
    encoded = [encode_prompt(tokenizer, prompt) for prompt in prompts]
    keys = [prompt.baseline_key() for prompt in prompts]
    new_baselines: dict[str, EncodedPrompt] = {}
    for key, (_, baseline) in zip(keys, encoded):
        if key not in baseline_memo:
            new_baselines.setdefault(key, baseline)
    results = likelihoods([question for question, _ in encoded] + list(new_baselines.values()))
    baseline_memo.update(zip(new_baselines, results[len(prompts):]))
    return [OptionScores(q.sums, baseline_memo[key].sums, q.counts) for q, key in zip(results, keys)]


@dataclass(frozen=True)
class Choice:
    index: int
    probabilities: list[float]


def choose(scores: OptionScores, rule: str = SCORING_RULE) -> Choice:
    """Softmax over the options' scores under `rule`; the argmax is the choice."""
    if rule == "pmi":
        values = [s - b for s, b in zip(scores.logprob_sums, scores.baseline_sums)]
    elif rule == "mean":
        values = [s / max(n, 1) for s, n in zip(scores.logprob_sums, scores.token_counts)]
    elif rule == "sum":
        values = list(scores.logprob_sums)
    else:
        raise ValueError(f"unknown scoring rule {rule!r}")
    top = max(values)
    weights = [math.exp(v - top) for v in values]
    total = sum(weights)
    probabilities = [w / total for w in weights]
    return Choice(index=max(range(len(values)), key=values.__getitem__), probabilities=probabilities)
