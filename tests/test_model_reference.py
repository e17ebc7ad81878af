"""`reference` gate mode reproduces the public MMoE implementation (fixture vectors), and its quirks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from model import MMoEFeatures, MMoEMatcher, reference_gate_weights
from model.reference import (
    config_from_reference_dims,
    convert_reference_state_dict,
    load_reference_weights,
    matcher_from_reference,
    reference_key_to_ours,
)

FIXTURE_NAME = "mmoe_reference_vectors.safetensors"
CASES = ("inbatch", "chunk")
OUTPUTS = {"score": "total", "text_score": "text", "image_score": "image", "cross_score": "cross"}
TOLERANCE = 1e-5


def _fixture_path() -> Path | None:
    candidates = [Path(__file__).resolve().parents[2] / "shared" / "fixtures" / FIXTURE_NAME]
    if os.environ.get("MEL_FIXTURES_DIR"):
        candidates.append(Path(os.environ["MEL_FIXTURES_DIR"]) / FIXTURE_NAME)
    return next((path for path in candidates if path.is_file()), None)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def fixture():
    path = _fixture_path()
    if path is None:
        pytest.skip(f"{FIXTURE_NAME} not found in ../shared/fixtures or $MEL_FIXTURES_DIR")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        dims = json.loads(handle.metadata()["dims"])
    weights = {key: value for key, value in tensors.items() if key.startswith("weights.")}
    return {"tensors": tensors, "dims": dims, "weights": weights}


@pytest.fixture(scope="module")
def reference_matcher(fixture):
    return matcher_from_reference(fixture["weights"], fixture["dims"])


def _features(tensors, case: str, side: str) -> MMoEFeatures:
    def get(name):
        return tensors[f"{case}.input.{side}_{name}"]

    return MMoEFeatures(get("text_embeds"), get("text_tokens"), get("image_embeds"), get("image_tokens"))


def _score(matcher, fixture, case, mention_rows=slice(None)):
    mentions = _features(fixture["tensors"], case, "mention").select(mention_rows)
    entities = _features(fixture["tensors"], case, "entity")
    with torch.no_grad():
        return matcher.score_all_pairs(mentions, entities)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("output", OUTPUTS)
def test_reference_mode_reproduces_published_outputs(fixture, reference_matcher, case, output):
    expected = fixture["tensors"][f"{case}.output.{output}"]
    actual = getattr(_score(reference_matcher, fixture, case), OUTPUTS[output])
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=TOLERANCE)


def test_topk_gate_with_the_same_weights_does_not_reproduce_them(fixture):
    """The fixture exercises the gate quirk: the paper's gate on the same weights gives other scores."""
    topk = MMoEMatcher(config_from_reference_dims(fixture["dims"], gate_mode="topk")).eval()
    load_reference_weights(topk, fixture["weights"])
    expected = fixture["tensors"]["inbatch.output.score"]
    assert (_score(topk, fixture, "inbatch").total - expected).abs().max() > 1e-2


def test_reference_scores_depend_on_the_batch(fixture, reference_matcher):
    """The published gate normalises over the batch: the same pairs score differently in a smaller batch."""
    full = _score(reference_matcher, fixture, "chunk").total
    first_three = _score(reference_matcher, fixture, "chunk", mention_rows=slice(0, 3)).total
    assert (full[:3] - first_three).abs().max() > 1e-3


def test_loader_uses_every_reference_parameter_except_the_unused_one(fixture):
    # drop the fixture's "weights.matcher." / "weights.encoder." prefixes
    stripped = {key.split(".", 2)[2]: value for key, value in fixture["weights"].items()}
    ours, ignored = convert_reference_state_dict(stripped)
    assert sorted(ignored) == ["cross_module.context_layer_norm.bias", "cross_module.context_layer_norm.weight"]
    model = MMoEMatcher(config_from_reference_dims(fixture["dims"]))
    assert set(ours) == set(model.state_dict())


def test_loader_accepts_lightning_names_and_ignores_clip():
    assert reference_key_to_ours("matcher.text_module.moe_layer.experts.3.ff.0.0.weight") == \
        "text_unit.moe.experts.3.fc_in.weight"
    assert reference_key_to_ours("matcher.cross_module.moe_layer.gate.w_gate.bias") == "cross_unit.moe.router.bias"
    assert reference_key_to_ours("encoder.image_tokens_fc.weight") == "image_token_proj.weight"
    assert reference_key_to_ours("matcher.vision_module.layer_norm.weight") == "vision_unit.context_norm.weight"
    assert reference_key_to_ours("matcher.cross_module.gate_layer_norm.bias") == "cross_unit.fusion_norm.bias"
    assert reference_key_to_ours("encoder.clip.text_model.embeddings.position_ids") is None
    with pytest.raises(KeyError, match="not a parameter"):
        reference_key_to_ours("matcher.something_new.weight")


def test_reference_gate_worked_example_from_gates_md():
    """X=4 experts, k=2, one item of 5 positions whose top-2 choices are given below (see GATES.md)."""
    choices = [(2, 0), (2, 1), (0, 3), (2, 0), (1, 2)]
    logits = torch.zeros(1, len(choices), 4)
    for position, (first, second) in enumerate(choices):
        logits[0, position, first], logits[0, position, second] = 3.0, 2.0
    receives_weight = reference_gate_weights(logits, top_k=2)[0] > 0
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(receives_weight, expected)


def test_reference_gate_normalises_over_the_batch_and_scales_by_its_size():
    logits = torch.randn(3, 6, 4)
    weights = reference_gate_weights(logits, top_k=4)
    used = weights.sum(dim=0) > 0  # (position, expert) pairs used by at least one item
    torch.testing.assert_close(weights.sum(dim=0)[used], torch.full((int(used.sum()),), 3.0), rtol=0, atol=1e-4)


def test_reference_mode_has_no_candidates_layout(fixture, reference_matcher):
    mentions = _features(fixture["tensors"], "chunk", "mention")
    first_four = _features(fixture["tensors"], "chunk", "entity").select(slice(0, 4))
    candidates = first_four.map(lambda t: t.unsqueeze(0).expand(5, *t.shape))  # batch shape [5, 4]
    with pytest.raises(ValueError, match="not available in reference mode"):
        reference_matcher.score_candidates(mentions, candidates)


def test_reference_routing_shows_that_only_the_first_tokens_reach_the_experts(fixture, reference_matcher):
    """Consequence of the quirk: positions >= num_experts get no expert output, whatever the sequence length."""
    dims = fixture["dims"]
    mentions = _features(fixture["tensors"], "chunk", "mention")
    with torch.no_grad():
        routing = reference_matcher.encode_mentions(mentions, with_routing=True).routing
    most_routed = (dims["num_experts"] - 1) * dims["top_experts"]  # token positions 1..X-1, columns 0..k-1
    for name, seq_routing in routing.items():
        assert (seq_routing.token_counts.sum(dim=1) <= most_routed).all(), name
        assert (seq_routing.token_counts[:, dims["top_experts"]:] == 0).all(), name


def test_reference_mode_ignores_text_mask_with_a_warning(fixture, reference_matcher):
    mentions = _features(fixture["tensors"], "chunk", "mention")
    entities = _features(fixture["tensors"], "chunk", "entity")
    mentions.text_mask = torch.ones(mentions.text_tokens.shape[:2], dtype=torch.bool)
    mentions.text_mask[:, 6:] = False
    with pytest.warns(UserWarning, match="ignores text_mask"), torch.no_grad():
        masked = reference_matcher.score_all_pairs(mentions, entities)
    torch.testing.assert_close(masked.total, fixture["tensors"]["chunk.output.score"], rtol=0, atol=TOLERANCE)
