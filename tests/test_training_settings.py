"""TrainingSettings: presets, learning rates, the matcher config they imply, and clear errors."""

import dataclasses

import pytest

from pipeline.errors import MELUserError
from pipeline.settings import SettingError, doc_of
from pipeline.training.settings import HEAD_LR, TrainingSettings

DIMS = {"D": 256, "L": 50, "Wt": 256, "P1": 50, "Wv": 256}


def test_presets_set_the_experts_top_k_and_the_paper_learning_rate():
    assert TrainingSettings(preset="wikimel").model_config(DIMS).top_k == 3
    assert TrainingSettings(preset="richpediamel").model_config(DIMS).top_k == 4
    assert TrainingSettings(preset="wikidiverse", top_k=1).model_config(DIMS).top_k == 1
    assert TrainingSettings(preset="wikimel", lr_preset="paper").learning_rate == 5e-6
    assert TrainingSettings(preset="wikidiverse", lr_preset="paper").learning_rate == 1e-5
    assert TrainingSettings().learning_rate == HEAD_LR
    assert TrainingSettings(lr=2e-4, lr_preset="paper").learning_rate == 2e-4


def test_the_matcher_config_follows_the_store_widths_and_the_hidden_width():
    config = TrainingSettings(hidden_dim=64, units=("image", "text")).model_config(
        {"D": 512, "L": 50, "Wt": 512, "P1": 50, "Wv": 768})
    assert (config.embed_dim, config.text_dim, config.image_token_dim) == (512, 512, 768)
    assert config.vision_dim == config.text_hidden_dim == config.cross_hidden_dim == 64
    assert config.units == ("text", "image")


def test_reference_gate_has_no_auxiliary_loss():
    assert TrainingSettings(gate_mode="reference").model_config(DIMS).aux_loss_weight == 0
    assert TrainingSettings().model_config(DIMS).aux_loss_weight == 0.01


def test_the_recipe_leaves_out_what_does_not_change_the_weights():
    base = TrainingSettings()
    assert base.recipe() == base.replace(device="cpu", rerank_k=10, full_kb=True, amp=False).recipe()
    assert base.recipe() != base.replace(hard_negatives=0).recipe()


@pytest.mark.parametrize("changes, message", [
    ({"preset": "imagenet"}, "preset 'imagenet'"),
    ({"gate_mode": "dense"}, "gate_mode 'dense'"),
    ({"top_k": 5}, "top_k (5) must be between 1 and num_experts (4)"),
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"hard_negatives": 30}, "hard_negatives (30) exceeds hard_negative_pool (20)"),
    ({"lr": -1.0}, "lr must not be negative"),
])
def test_bad_settings_name_the_field(changes, message):
    with pytest.raises(MELUserError, match=message.replace("(", r"\(").replace(")", r"\)")) as refused:
        TrainingSettings(**changes)
    assert isinstance(refused.value, SettingError) and refused.value.settings is TrainingSettings
    assert refused.value.message.startswith(next(iter(changes))) and "Resource" not in refused.value.message


def test_unknown_units_are_named():
    with pytest.raises(MELUserError, match=r"units names \['audio'\]"):
        TrainingSettings(units=("text", "audio"))


def test_every_setting_is_documented():
    assert all(doc_of(field) for field in dataclasses.fields(TrainingSettings))


def test_a_store_whose_text_and_embedding_widths_differ_is_refused():
    with pytest.raises(MELUserError, match="text width"):
        TrainingSettings().model_config({**DIMS, "Wt": 384})
