"""MMoE matcher in `topk` mode: gate properties, pair independence, masks, layouts, routing, training,
checkpoints, feature checks. Tiny widths so that everything runs in seconds on a CPU."""

from __future__ import annotations

import json

import pytest
import torch

from model import (
    ROUTED_SEQUENCES,
    CheckpointConfigMismatch,
    MMoEConfig,
    MMoEFeatures,
    MMoEMatcher,
    NonFiniteFeatureError,
    SwitchMoE,
    check_finite_features,
    load_checkpoint,
    mmoe_loss,
    routing_records,
    save_checkpoint,
    topk_gate_weights,
)

TINY = MMoEConfig(embed_dim=8, text_dim=8, image_token_dim=12, vision_dim=8, text_hidden_dim=8,
                  vision_hidden_dim=8, cross_hidden_dim=8, num_experts=4, top_k=2)
TEXT_TOKENS, IMAGE_TOKENS = 7, 5  # deliberately different


def make_features(*batch: int, real_text_tokens: int = 5, seed: int = 0) -> MMoEFeatures:
    """Random CLIP-like features; text positions >= real_text_tokens are padding."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(*batch, TEXT_TOKENS, dtype=torch.bool)
    mask[..., :real_text_tokens] = True
    return MMoEFeatures(
        text_embeds=torch.randn(*batch, TINY.embed_dim, generator=generator),
        text_tokens=torch.randn(*batch, TEXT_TOKENS, TINY.text_dim, generator=generator),
        image_embeds=torch.randn(*batch, TINY.embed_dim, generator=generator),
        image_tokens=torch.randn(*batch, IMAGE_TOKENS, TINY.image_token_dim, generator=generator),
        text_mask=mask,
    )


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture
def matcher() -> MMoEMatcher:
    torch.manual_seed(0)
    return MMoEMatcher(TINY).eval()


def assert_scores_close(actual, expected, atol=1e-5):
    for unit in ("total", "text", "image", "cross"):
        torch.testing.assert_close(getattr(actual, unit), getattr(expected, unit), rtol=0, atol=atol, msg=unit)


# --- the topk gate -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("top_k", [1, 2, 3, 4])
def test_topk_gate_keeps_exactly_k_experts_whose_weights_sum_to_one(top_k):
    logits = torch.randn(5, 7, 4)
    weights = topk_gate_weights(logits, top_k)
    assert ((weights > 0).sum(dim=-1) == top_k).all()
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(5, 7))
    kept_by_softmax = logits.softmax(-1).topk(top_k, dim=-1).indices
    assert (weights.gather(-1, kept_by_softmax) > 0).all(), "the kept experts are the k most probable ones"


def test_topk_moe_output_is_the_weighted_sum_of_its_experts():
    moe = SwitchMoE(dim=6, out_dim=3, num_experts=4, top_k=2)
    x = torch.randn(2, 5, 6)
    result = moe(x)
    expected = sum(result.weights[..., e:e + 1] * expert(x) for e, expert in enumerate(moe.experts))
    torch.testing.assert_close(result.output, expected)


def test_load_balancing_loss_is_one_for_a_uniform_router_and_masks_padding():
    moe = SwitchMoE(dim=6, out_dim=3, num_experts=4, top_k=2)
    torch.nn.init.zeros_(moe.router.weight)
    torch.nn.init.zeros_(moe.router.bias)
    torch.testing.assert_close(moe(torch.randn(3, 5, 6)).aux_loss, torch.tensor(1.0))
    moe = SwitchMoE(dim=6, out_dim=3, num_experts=4, top_k=2)
    x, mask = torch.randn(3, 5, 6), torch.tensor([True, True, True, False, False]).expand(3, 5)
    changed = x.clone()
    changed[:, 3:] = 100.0  # padding content must not change the loss
    torch.testing.assert_close(moe(x, mask=mask).aux_loss, moe(changed, mask=mask).aux_loss)


def test_aux_loss_is_weighted_by_config_and_zero_when_disabled():
    features = make_features(3)
    torch.manual_seed(0)
    with_aux = MMoEMatcher(TINY.replace(aux_loss_weight=0.5))
    torch.manual_seed(0)
    without = MMoEMatcher(TINY.replace(aux_loss_weight=0.0))
    assert with_aux(features, features).aux_loss > 0.1
    assert without(features, features).aux_loss == 0


# --- scores depend only on the pair ------------------------------------------------------------------------

def test_a_pair_scores_the_same_alone_as_inside_a_larger_batch(matcher):
    mentions, entities = make_features(4, seed=1), make_features(6, seed=2)
    with torch.no_grad():
        batch = matcher.score_all_pairs(mentions, entities)
        for m, e in [(0, 0), (2, 5), (3, 1)]:
            alone = matcher.score_all_pairs(mentions.select([m]), entities.select([e]))
            for unit in ("total", "text", "image", "cross"):
                torch.testing.assert_close(getattr(alone, unit)[0, 0], getattr(batch, unit)[m, e],
                                           rtol=0, atol=1e-5)


def test_candidates_layout_equals_the_matching_all_pairs_entries(matcher):
    mentions, pool = make_features(3, seed=1), make_features(6, seed=2)
    candidate_ids = torch.tensor([[0, 4, 5], [2, 2, 1], [5, 3, 0]])  # [M, K] indices into the pool
    candidates = pool.map(lambda t: t[candidate_ids])  # batch shape [3, 3]
    with torch.no_grad():
        everything = matcher.score_all_pairs(mentions, pool, return_routing=True)
        per_mention = matcher.score_candidates(mentions, candidates, return_routing=True)
    for unit in ("total", "text", "image", "cross"):
        expected = getattr(everything, unit).gather(1, candidate_ids)
        torch.testing.assert_close(getattr(per_mention, unit), expected, rtol=0, atol=1e-5, msg=unit)
    for name in ROUTED_SEQUENCES:
        assert torch.equal(per_mention.entity_routing[name].class_experts,
                           everything.entity_routing[name].class_experts[candidate_ids])


def test_cached_entity_encodings_score_like_direct_calls(matcher):
    """A KB can be encoded once and scored in chunks."""
    mentions, kb = make_features(2, seed=1), make_features(7, seed=2)
    with torch.no_grad():
        direct = matcher.score_all_pairs(mentions, kb)
        mention_encoding = matcher.encode_mentions(mentions)
        chunks = [matcher.score_encoded(mention_encoding, matcher.encode_entities(kb.select(slice(start, start + 3))))
                  for start in range(0, 7, 3)]
    torch.testing.assert_close(torch.cat([chunk.total for chunk in chunks], dim=1), direct.total, rtol=0, atol=1e-5)


# --- real-feature needs: padding, token counts, missing images ---------------------------------------------

def test_text_padding_does_not_affect_scores(matcher):
    mentions, entities = make_features(3, seed=1), make_features(4, seed=2)

    def garbage_in_padding(f):
        return MMoEFeatures(f.text_embeds, torch.where(f.text_mask[..., None], f.text_tokens, 1e3),
                            f.image_embeds, f.image_tokens, f.text_mask)

    def without_mask(f):
        return MMoEFeatures(f.text_embeds, f.text_tokens, f.image_embeds, f.image_tokens)

    with torch.no_grad():
        clean = matcher.score_all_pairs(mentions, entities)
        garbage = matcher.score_all_pairs(garbage_in_padding(mentions), garbage_in_padding(entities))
        unmasked = matcher.score_all_pairs(without_mask(garbage_in_padding(mentions)),
                                           without_mask(garbage_in_padding(entities)))
    assert_scores_close(garbage, clean)
    assert (unmasked.total - clean.total).abs().max() > 1e-3, "without the mask the padding would matter"


def test_trimming_the_padding_away_gives_the_same_scores(matcher):
    mentions, entities = make_features(3, seed=1), make_features(4, seed=2)
    trim = lambda f: MMoEFeatures(f.text_embeds, f.text_tokens[:, :5], f.image_embeds, f.image_tokens)
    with torch.no_grad():
        assert_scores_close(matcher.score_all_pairs(trim(mentions), trim(entities)),
                            matcher.score_all_pairs(mentions, entities))


def test_text_and_image_token_counts_may_differ(matcher):
    mentions, entities = make_features(2), make_features(3)
    assert mentions.text_tokens.shape[1] != mentions.image_tokens.shape[1]
    scores = matcher.score_all_pairs(mentions, entities)
    assert scores.total.shape == (2, 3) and torch.isfinite(scores.total).all()


def test_items_without_an_image_are_scored_as_a_zero_image(matcher):
    mentions, entities = make_features(3, seed=1), make_features(4, seed=2)
    no_image = torch.tensor([True, False, True])
    flagged = MMoEFeatures(mentions.text_embeds, mentions.text_tokens, mentions.image_embeds.clone(),
                           mentions.image_tokens.clone(), mentions.text_mask, has_image=no_image)
    flagged.image_embeds[1] = float("nan")  # whatever the placeholder row holds is ignored
    zero_image = MMoEFeatures(mentions.text_embeds, mentions.text_tokens, mentions.image_embeds.clone(),
                              mentions.image_tokens.clone(), mentions.text_mask)
    zero_image.image_embeds[1], zero_image.image_tokens[1] = 0.0, 0.0
    with torch.no_grad():
        assert_scores_close(matcher.score_all_pairs(flagged, entities), matcher.score_all_pairs(zero_image, entities))
        original = matcher.score_all_pairs(mentions, entities)
        flagged_scores = matcher.score_all_pairs(flagged, entities)
    torch.testing.assert_close(flagged_scores.total[[0, 2]], original.total[[0, 2]], rtol=0, atol=1e-5)
    assert (flagged_scores.image[1] - original.image[1]).abs().max() > 1e-3


# --- routing information -------------------------------------------------------------------------------------

def test_routing_reports_class_experts_and_per_expert_counts_of_real_tokens(matcher):
    mentions = make_features(3, real_text_tokens=4)
    scores = matcher.score_all_pairs(mentions, make_features(2), return_routing=True)
    assert set(scores.mention_routing) == set(ROUTED_SEQUENCES)
    real_tokens = {"text": 4, "image": IMAGE_TOKENS, "cross_text_image": IMAGE_TOKENS, "cross_image_text": 4}
    for name, routing in scores.mention_routing.items():
        assert routing.class_experts.shape == (3, TINY.top_k)
        assert ((routing.class_experts >= 0) & (routing.class_experts < TINY.num_experts)).all()
        assert (routing.class_experts[:, 0] != routing.class_experts[:, 1]).all()
        assert routing.token_counts.shape == (3, TINY.num_experts)
        assert (routing.token_counts.sum(dim=1) == TINY.top_k * real_tokens[name]).all(), name
    records = routing_records(scores.mention_routing)
    assert len(records) == 3
    assert records[0]["text"]["class_experts"] == scores.mention_routing["text"].class_experts[0].tolist()
    json.dumps(records)  # ready for a predictions table


def test_routing_is_off_unless_requested(matcher):
    scores = matcher.score_all_pairs(make_features(2), make_features(2))
    assert scores.mention_routing is None and scores.entity_routing is None


# --- training, loss ------------------------------------------------------------------------------------------

def test_loss_is_the_sum_of_the_four_cross_entropies_and_aux(matcher):
    features = make_features(4)
    scores = matcher.score_all_pairs(features, features)
    loss, parts = mmoe_loss(scores, torch.arange(4))
    assert set(parts) == {"total", "text", "image", "cross", "aux"}
    torch.testing.assert_close(loss.detach(), sum(parts.values()))
    expected_total = torch.nn.functional.cross_entropy(scores.total, torch.arange(4))
    torch.testing.assert_close(parts["total"], expected_total.detach())


def test_training_a_few_steps_on_a_separable_toy_problem_reduces_the_loss():
    """Mention i and entity i share a random pattern; in-batch negatives should become separable."""
    torch.manual_seed(0)
    model = MMoEMatcher(TINY.replace(aux_loss_weight=0.01))
    shared = make_features(8, seed=3)

    def noisy(seed):
        generator = torch.Generator().manual_seed(seed)
        return shared.map(lambda t: t + 0.3 * torch.randn(t.shape, generator=generator) if t.is_floating_point() else t)

    mentions, entities = noisy(4), noisy(5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss, _ = mmoe_loss(model.score_all_pairs(mentions, entities), torch.arange(8))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_forward_under_bfloat16_autocast_is_finite(matcher):
    features = make_features(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = matcher.score_all_pairs(features, features)
    assert torch.isfinite(scores.total.float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda_and_agrees_with_cpu(matcher):
    features = make_features(3)
    with torch.no_grad():
        cpu = matcher.score_all_pairs(features, features)
        gpu = matcher.to("cuda").score_all_pairs(features.to("cuda"), features.to("cuda"))
    torch.testing.assert_close(gpu.total.cpu(), cpu.total, rtol=1e-4, atol=1e-4)


# --- checkpoints ---------------------------------------------------------------------------------------------

def test_checkpoint_round_trip_restores_config_weights_and_extra(matcher, tmp_path):
    save_checkpoint(tmp_path / "ckpt", matcher, TINY, extra={"epoch": 3, "val_mrr": 0.5})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_checkpoint(tmp_path / "ckpt", expected_config=TINY)
    assert loaded.config == TINY and loaded.extra == {"epoch": 3, "val_mrr": 0.5}
    features = make_features(2)
    with torch.no_grad():
        assert_scores_close(loaded.model.eval()(features, features), matcher(features, features), atol=0)


def test_loading_a_checkpoint_with_another_config_names_the_field(matcher, tmp_path):
    save_checkpoint(tmp_path, matcher, TINY)
    with pytest.raises(CheckpointConfigMismatch, match=r"top_k: checkpoint=2, expected=3"):
        load_checkpoint(tmp_path, expected_config=TINY.replace(top_k=3))


def test_checkpoint_weights_load_strictly(matcher, tmp_path):
    from safetensors.torch import load_file, save_file

    save_checkpoint(tmp_path, matcher, TINY)
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["cross_unit.fusion_gate.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(RuntimeError, match="cross_unit.fusion_gate.weight"):
        load_checkpoint(tmp_path)


# --- configuration -------------------------------------------------------------------------------------------

def test_config_round_trips_through_a_dict_and_rejects_unknown_fields():
    assert MMoEConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="unknown MMoEConfig fields"):
        MMoEConfig.from_dict({**TINY.to_dict(), "topk": 3})


def test_paper_presets_and_clip_constructor():
    assert [MMoEConfig.paper(name).top_k for name in ("WikiMEL", "RichpediaMEL", "WikiDiverse")] == [3, 4, 2]
    wikimel = MMoEConfig.paper("wikimel")
    assert (wikimel.num_experts, wikimel.vision_dim, wikimel.cross_hidden_dim) == (4, 96, 96)
    assert (wikimel.embed_dim, wikimel.text_dim, wikimel.image_token_dim) == (512, 512, 768)
    assert MMoEConfig.for_clip("ViT-L-14").image_token_dim == 1024
    with pytest.raises(ValueError, match="top_k"):
        MMoEConfig(top_k=5)
    with pytest.raises(ValueError, match="aux_loss_weight must be 0 in reference mode"):
        MMoEConfig(gate_mode="reference")


# --- input checks --------------------------------------------------------------------------------------------

def test_nan_check_names_the_tensor_and_the_rows():
    features = make_features(5)
    features.text_tokens[1, 2, 3] = float("nan")
    features.text_tokens[4, 0, 0] = float("inf")
    features.image_embeds[2, 0] = float("nan")
    with pytest.raises(NonFiniteFeatureError) as error:
        check_finite_features(features, name="mentions")
    message = str(error.value)
    assert "mentions.text_tokens: rows [1, 4]" in message
    assert "mentions.image_embeds: rows [2]" in message
    assert "text_embeds" not in message


def test_nan_check_passes_clean_batches_and_ignores_images_flagged_missing():
    features = make_features(3)
    check_finite_features(features)
    features.image_tokens[1] = float("nan")
    features.has_image = torch.tensor([True, False, True])
    check_finite_features(features)


def test_wrong_widths_and_empty_text_rows_are_rejected(matcher):
    features = make_features(2)
    with pytest.raises(ValueError, match="image_tokens has shape"):
        matcher(features.map(lambda t: t[..., :-1] if t.shape[-1] == TINY.image_token_dim else t), features)
    features.text_mask[1] = False
    with pytest.raises(ValueError, match=r"no real token in rows \[1\]"):
        matcher(features, features)
