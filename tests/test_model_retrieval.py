"""The matcher's retrieval vectors: their inner products are exactly the separable part of the total score,
in both layouts and for every unit subset, so an index of entity vectors ranks what the matcher's own
separable part ranks."""

from __future__ import annotations

import pytest
import torch

from model import MMoEMatcher, mmoe_loss, retrieval_dim
from model.mmoe import pair_dot
from tests.test_model_mmoe import TINY, make_features

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def separable_by_hand(matcher: MMoEMatcher, mentions, entities) -> torch.Tensor:
    """(sum of the intra units' global-to-global dots + the cross unit's score) / (2 n), from the encodings."""
    m, e = matcher.encode_mentions(mentions), matcher.encode_entities(entities)
    e = e.map_batch(lambda t: t.unsqueeze(0))
    parts = []
    if m.text is not None:
        parts.append(pair_dot(m.text.cls, e.text.cls))
    if m.image is not None:
        parts.append(pair_dot(m.image.cls, e.image.cls))
    if m.cross is not None:
        parts.append(matcher.cross_unit.score(m.cross, e.cross) * 2)  # the cross score is a mean of two dots
    return sum(parts) / (2 * len(matcher.config.units))


@pytest.mark.parametrize("units", [("text", "image", "cross"), ("text",), ("image", "cross"), ("cross",)])
def test_vector_dot_products_are_the_separable_part_of_the_score(units):
    torch.manual_seed(0)
    matcher = MMoEMatcher(TINY.replace(units=units)).eval()
    mentions, entities = make_features(3, seed=1), make_features(5, seed=2)
    with torch.no_grad():
        scores = matcher.score_all_pairs(mentions, entities)
        mention_vectors = matcher.retrieval_vectors(matcher.encode_mentions(mentions))
        entity_vectors = matcher.retrieval_vectors(matcher.encode_entities(entities))
    assert mention_vectors.shape == (3, retrieval_dim(matcher.config))
    torch.testing.assert_close(mention_vectors @ entity_vectors.T, scores.retrieval)
    torch.testing.assert_close(scores.retrieval, separable_by_hand(matcher, mentions, entities))


def test_candidate_layout_gives_the_same_separable_scores_as_all_pairs():
    torch.manual_seed(0)
    matcher = MMoEMatcher(TINY).eval()
    mentions, entities = make_features(2, seed=1), make_features(4, seed=2)
    candidates = entities.select(torch.tensor([[3, 1, 0], [2, 2, 1]]))
    with torch.no_grad():
        all_pairs = matcher.score_all_pairs(mentions, entities).retrieval
        per_mention = matcher.score_candidates(mentions, candidates).retrieval
    torch.testing.assert_close(per_mention, all_pairs[[[0], [1]], [[3, 1, 0], [2, 2, 1]]], atol=1e-5, rtol=0)


def test_retrieval_loss_is_weighted_and_absent_by_default():
    torch.manual_seed(0)
    matcher = MMoEMatcher(TINY).eval()
    features = make_features(4)
    scores = matcher.score_all_pairs(features, features)
    assert "retrieval" not in mmoe_loss(scores, torch.arange(4)).parts
    loss, parts = mmoe_loss(scores, torch.arange(4), retrieval_weight=0.5)
    expected = 0.5 * torch.nn.functional.cross_entropy(scores.retrieval, torch.arange(4))
    torch.testing.assert_close(parts["retrieval"], expected.detach())
    torch.testing.assert_close(loss.detach(), sum(parts.values()))


@pytest.mark.parametrize("units", [("text", "image", "cross"), ("text",), ("image",)])
def test_the_retrieval_encoding_gives_the_same_vectors_without_the_intra_experts(units):
    torch.manual_seed(0)
    matcher = MMoEMatcher(TINY.replace(units=units)).eval()
    features = make_features(6, seed=3)
    for is_entity in (False, True):
        full = matcher.encode_entities(features) if is_entity else matcher.encode_mentions(features)
        cheap = matcher.encode_for_retrieval(features, is_entity)
        torch.testing.assert_close(matcher.retrieval_vectors(cheap), matcher.retrieval_vectors(full), rtol=0, atol=0)
