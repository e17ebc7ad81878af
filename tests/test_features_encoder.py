"""The open_clip extractor: what each output is, what decides its values, and its setting errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import MELUserError
from pipeline.features import EncoderSpec
from pipeline.features.encoder import ClipEncoder, load_encoder, tokenize


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    return load_encoder(EncoderSpec())  # the offline default: mel-tiny-clip, random init, seed 0


def encode(encoder, texts, images=None):
    """Encode texts, with an image per text or None (a no-image item)."""
    tokenized = [tokenize(encoder.tokenizer, text, encoder.context_length) for text in texts]
    images = images or [None] * len(texts)
    present = [image for image in images if image is not None]
    return encoder.encode(
        torch.stack([t.tokens for t in tokenized]),
        torch.tensor([t.length for t in tokenized]),
        torch.stack(present) if present else torch.zeros(0),
        torch.tensor([image is not None for image in images]),
    )


def random_image(seed: int) -> torch.Tensor:
    return torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(seed))


def test_outputs_have_the_shapes_the_matcher_expects(encoder):
    out = encode(encoder, ["Jordan [SEP] American basketball player"], [random_image(0)])

    assert encoder.dims == {"D": 256, "L": 50, "Wt": 256, "P1": 50, "Wv": 256}  # 49 patches + class token
    assert out.text_embeds.shape == (1, 256) and out.image_embeds.shape == (1, 256)
    assert out.text_tokens.shape == (1, 50, 256) and out.image_tokens.shape == (1, 50, 256)
    assert out.text_tokens.dtype == torch.float16 and out.has_image.tolist() == [True]


def test_image_tokens_are_pre_norm_hidden_states_with_the_class_token_first(encoder):
    out = encode(encoder, ["a photo"], [random_image(1)])
    visual = encoder.model.visual

    with torch.no_grad():
        class_token = out.image_tokens[:, 0].float()
        pooled_from_class_token = visual.ln_post(class_token) @ visual.proj

    np.testing.assert_allclose(pooled_from_class_token.numpy(), out.image_embeds.float().numpy(), atol=1e-2)


def test_text_tokens_are_post_ln_final_states_masked_after_the_eot(encoder):
    text = "Amman is the capital of Jordan"
    out = encode(encoder, [text])
    length = tokenize(encoder.tokenizer, text, encoder.context_length).length

    with torch.no_grad():
        eot_state = out.text_tokens[0, length - 1].float()
        pooled_from_eot = eot_state @ encoder.model.text_projection

    np.testing.assert_allclose(pooled_from_eot.numpy(), out.text_embeds[0].float().numpy(), atol=1e-2)
    assert out.text_mask[0].tolist() == [1] * length + [0] * (50 - length)
    assert not out.text_tokens[0, length:].any()


def test_an_item_encodes_the_same_whatever_shares_its_batch(encoder):
    alone = encode(encoder, ["Universe [SEP] totality of space and time"])
    crowded = encode(encoder, ["Universe [SEP] totality of space and time", "word " * 70], [None, random_image(2)])

    for name in ("text_embeds", "text_tokens", "image_embeds", "image_tokens"):
        np.testing.assert_allclose(getattr(alone, name)[0].float().numpy(),
                                   getattr(crowded, name)[0].float().numpy(), atol=2e-2, err_msg=name)


def test_items_without_an_image_get_the_zero_image_features_and_a_flag(encoder):
    without = encode(encoder, ["no picture"])
    zero_image = encode(encoder, ["no picture"], [torch.zeros(3, 224, 224)])

    assert without.has_image.tolist() == [False]
    np.testing.assert_allclose(without.image_embeds.float().numpy(), zero_image.image_embeds.float().numpy(),
                               atol=1e-2)
    assert without.image_embeds.abs().max() > 0  # CLIP's answer to a zero image, as the paper feeds it


def test_uint8_pixels_normalised_by_the_encoder_equal_open_clip_preprocessing(encoder):
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8))

    pixels = encoder.image_transform(picture)  # what a DataLoader worker sends

    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 224, 224)
    torch.testing.assert_close(encoder.normalize(pixels[None])[0], encoder.preprocess(picture))


def test_text_past_the_context_length_is_cut_and_ends_with_eot(encoder):
    tokenized = tokenize(encoder.tokenizer, "word " * 500, encoder.context_length)

    assert tokenized.untruncated == 502 and tokenized.length == 77
    assert tokenized.tokens[-1].item() == encoder.tokenizer.eot_token_id


def test_random_init_is_fixed_by_the_seed(encoder):
    again = ClipEncoder.load(EncoderSpec(seed=0))
    other = ClipEncoder.load(EncoderSpec(seed=1))

    weights = encoder.model.token_embedding.weight
    assert torch.equal(again.model.token_embedding.weight, weights)
    assert not torch.equal(other.model.token_embedding.weight, weights)


def test_a_local_checkpoint_is_loaded_and_identified_by_its_content(encoder, tmp_path):
    trained = {**encoder.model.state_dict(), "visual.proj": 2 * encoder.model.visual.proj}  # not what seed 0 gives
    checkpoint = tmp_path / "weights.pt"
    torch.save(trained, checkpoint)

    loaded = ClipEncoder.load(EncoderSpec(checkpoint=str(checkpoint)))
    identity = EncoderSpec(checkpoint=str(checkpoint)).identity()
    torch.save({**trained, "logit_scale": torch.tensor(1.0)}, checkpoint)

    assert torch.equal(loaded.model.visual.proj, trained["visual.proj"])
    assert identity["weights"].startswith("checkpoint:")
    assert EncoderSpec(checkpoint=str(checkpoint)).identity()["weights"] != identity["weights"]


def test_identity_names_everything_that_decides_the_values():
    base = EncoderSpec().identity()

    assert base["arch"] == "mel-tiny-clip" and base["weights"] == "random-init seed=0"
    assert base["image_size"] == 224 and base["text_tokens"] == 50 and base["stored_precision"] == "float16"
    assert "open_clip" in base
    assert EncoderSpec(seed=1).identity() != base
    assert EncoderSpec(text_tokens=32).identity() != base
    assert EncoderSpec(device="cpu", precision="fp32").identity() == base  # how it runs is not what it computes


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (EncoderSpec(arch="ViT-Nope"), "is not an open_clip architecture"),
        (EncoderSpec(pretrained="openai", checkpoint="x.pt"), "set only one of them"),
        (EncoderSpec(checkpoint="/no/such/weights.pt"), "is not a file"),
        (EncoderSpec(pretrained=__file__), "is a file; set it as checkpoint"),
        (EncoderSpec(precision="int4"), "is not one of"),
        (EncoderSpec(precision="fp16", device="cpu"), "needs a CUDA GPU"),
        (EncoderSpec(text_tokens=78), "must be between 1 and the context length"),
        (EncoderSpec(pretrained="openai"), "Could not load open_clip 'mel-tiny-clip'"),
        (EncoderSpec(arch="RN50"), "does not give per-token features"),  # a ResNet has no token sequence
    ],
)
def test_bad_settings_fail_with_one_sentence_naming_the_setting(spec, message):
    with pytest.raises(MELUserError, match=message):
        ClipEncoder.load(spec)
