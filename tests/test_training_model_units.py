"""`MMoEConfig.units`: the matcher with a subset of its scoring units (the ablations), a small addition to
`model/` made for training; the default keeps all three and changes nothing."""

import pytest
import torch

from model import MMoEConfig, MMoEFeatures, MMoEMatcher, load_checkpoint, mmoe_loss, save_checkpoint

TINY = MMoEConfig(embed_dim=8, text_dim=8, image_token_dim=12, vision_dim=8, text_hidden_dim=8,
                  vision_hidden_dim=8, cross_hidden_dim=8, num_experts=4, top_k=2)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def features(n: int, seed: int) -> MMoEFeatures:
    generator = torch.Generator().manual_seed(seed)
    return MMoEFeatures(torch.randn(n, 8, generator=generator), torch.randn(n, 6, 8, generator=generator),
                        torch.randn(n, 8, generator=generator), torch.randn(n, 5, 12, generator=generator))


def matcher(**changes) -> MMoEMatcher:
    torch.manual_seed(0)
    return MMoEMatcher(TINY.replace(**changes)).eval()


def test_the_default_keeps_all_three_units_in_canonical_order():
    assert TINY.units == ("text", "image", "cross")
    assert MMoEConfig(units=["cross", "text"]).units == ("text", "cross")
    assert MMoEConfig.from_dict({**TINY.to_dict(), "units": ["image"]}).units == ("image",)


@pytest.mark.parametrize("bad", [(), ("text", "audio"), "vision"])
def test_unknown_or_empty_units_are_rejected(bad):
    with pytest.raises(ValueError, match="units"):
        MMoEConfig(units=bad)


def test_a_disabled_unit_has_no_parameters_and_no_score():
    full, text_only = matcher(), matcher(units=("text",))
    assert not any(name.startswith(("vision_unit", "cross_unit")) for name, _ in text_only.named_parameters())
    assert sum(p.numel() for p in text_only.parameters()) < sum(p.numel() for p in full.parameters())

    scores = text_only.score_all_pairs(features(3, 1), features(4, 2))

    assert scores.image is None and scores.cross is None
    torch.testing.assert_close(scores.total, scores.text)


def test_the_total_is_the_mean_of_the_enabled_units_with_the_same_weights():
    full = matcher()
    without_cross = MMoEMatcher(TINY.replace(units=("text", "image"))).eval()
    without_cross.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("cross_unit")})
    mentions, entities = features(3, 1), features(4, 2)

    full_scores = full.score_all_pairs(mentions, entities)
    ablated = without_cross.score_all_pairs(mentions, entities)

    torch.testing.assert_close(ablated.text, full_scores.text)
    torch.testing.assert_close(ablated.total, (full_scores.text + full_scores.image) / 2)


def test_the_loss_leaves_out_disabled_units():
    scores = matcher(units=("image", "cross")).score_all_pairs(features(4, 1), features(4, 2))
    loss, parts = mmoe_loss(scores, torch.arange(4))
    assert set(parts) == {"total", "image", "cross", "aux"}
    torch.testing.assert_close(loss, sum(parts.values()))


def test_candidate_layout_and_checkpoints_work_with_a_subset(tmp_path):
    model = matcher(units=("image",))
    mentions, candidates = features(2, 1), features(6, 2).map(lambda t: t.reshape(2, 3, *t.shape[1:]))
    scores = model.score_candidates(mentions, candidates)
    save_checkpoint(tmp_path, model)

    loaded = load_checkpoint(tmp_path, TINY.replace(units=("image",)))

    torch.testing.assert_close(loaded.model.score_candidates(mentions, candidates).total, scores.total)
