"""Ranking metrics: gold ranks from scores (ties pessimistic, explicit misses) and Hits@k / MR / MRR."""

from __future__ import annotations

import math

import pytest
import torch

from model import gold_ranks, ranking_metrics


def test_metrics_from_known_ranks():
    metrics = ranking_metrics([1, 2, 5, 30])
    assert metrics["hits@1"] == 0.25
    assert metrics["hits@3"] == 0.5
    assert metrics["hits@5"] == metrics["hits@10"] == metrics["hits@20"] == 0.75
    assert metrics["mr"] == 9.5
    assert math.isclose(metrics["mrr"], (1 + 1 / 2 + 1 / 5 + 1 / 30) / 4)
    assert metrics["count"] == 4


def test_metrics_accept_tensors_and_reject_non_ranks():
    assert ranking_metrics(torch.tensor([1, 1]))["mrr"] == 1.0
    with pytest.raises(ValueError, match=">= 1"):
        ranking_metrics([0, 1])
    with pytest.raises(ValueError, match="no ranks"):
        ranking_metrics([])


def test_gold_rank_counts_the_candidates_scoring_higher_plus_one():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3],
                           [2.0, 1.0, 0.0, -1.0]])
    assert gold_ranks(scores, torch.tensor([2, 0])).tolist() == [2, 1]


def test_ties_count_against_the_gold():
    """Pessimistic: a gold tied with two others ranks after both, wherever it sits in the list."""
    scores = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]])
    for gold in (1, 2, 3):
        assert gold_ranks(scores, torch.tensor([gold])).tolist() == [3]
    assert gold_ranks(scores, torch.tensor([0])).tolist() == [4]


def test_a_gold_missing_from_the_candidates_gets_the_stated_miss_rank():
    scores = torch.tensor([[0.2, 0.1, 0.0], [0.0, 0.5, 0.1]])
    gold = torch.tensor([-1, 1])  # first mention's gold was not retrieved
    assert gold_ranks(scores, gold, miss_rank=4).tolist() == [4, 1]
    with pytest.raises(ValueError, match="miss_rank"):
        gold_ranks(scores, gold)
    with pytest.raises(ValueError, match="miss_rank"):
        gold_ranks(scores, gold, miss_rank=3)  # must lie beyond the list


def test_gold_ranks_refuse_non_finite_scores_and_bad_indices():
    with pytest.raises(ValueError, match="NaN"):
        gold_ranks(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="out of range"):
        gold_ranks(torch.tensor([[0.0, 1.0]]), torch.tensor([2]))
