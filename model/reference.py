"""Load weights trained with the public MMoE code (MEL-MMoE, KDD 2025) into MMoEMatcher.

Parameter names, reference -> ours (matcher and the encoder's two image projections; CLIP itself is not ours):
    image_cls_fc / image_tokens_fc                 -> image_embed_proj / image_token_proj
    {text,image}_cls_layernorm                     -> {text,image}_embed_norm
    {text,image}_tokens_layernorm                  -> {text,image}_token_norm
    text_module / vision_module / cross_module     -> text_unit / vision_unit / cross_unit
    fc_query / fc_key / fc_value / layer_norm      -> query / key / value / context_norm
    text_fc / image_fc / gate_fc / gate_layer_norm -> text_proj / image_proj / fusion_gate / fusion_norm
    moe_layer.gate.w_gate                          -> moe.router
    moe_layer.experts.i.ff.0.0 / .ff.2             -> moe.experts.i.fc_in / .fc_out
Ignored: cross_module.context_layer_norm (created but never used by the published forward) and clip.* (the
CLIP backbone, which the published code fine-tunes; export its features with your own CLIP copy).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Union

import torch
from torch import Tensor

from .config import MMoEConfig
from .mmoe import MMoEMatcher

# Public YAML `model:` keys -> MMoEConfig fields. `hidden_dim` exists there but no module reads it.
REFERENCE_DIM_NAMES = {
    "input_hidden_dim": "embed_dim",
    "dt": "text_dim",
    "input_image_hidden_dim": "image_token_dim",
    "dv": "vision_dim",
    "TGLU_hidden_dim": "text_hidden_dim",
    "IDLU_hidden_dim": "vision_hidden_dim",
    "CMFU_hidden_dim": "cross_hidden_dim",
    "num_experts": "num_experts",
    "top_experts": "top_k",
}
UNUSED_REFERENCE_DIMS = {"hidden_dim"}

# Applied in order to every key after wrapper prefixes are stripped.
_RENAMES = [
    (r"^image_cls_fc\.", "image_embed_proj."),
    (r"^image_tokens_fc\.", "image_token_proj."),
    (r"^text_cls_layernorm\.", "text_embed_norm."),
    (r"^text_tokens_layernorm\.", "text_token_norm."),
    (r"^image_cls_layernorm\.", "image_embed_norm."),
    (r"^image_tokens_layernorm\.", "image_token_norm."),
    (r"^text_module\.", "text_unit."),
    (r"^vision_module\.", "vision_unit."),
    (r"^cross_module\.", "cross_unit."),
    (r"\.fc_query\.", ".query."),
    (r"\.fc_key\.", ".key."),
    (r"\.fc_value\.", ".value."),
    (r"\.layer_norm\.", ".context_norm."),
    (r"\.text_fc\.", ".text_proj."),
    (r"\.image_fc\.", ".image_proj."),
    (r"\.gate_fc\.", ".fusion_gate."),
    (r"\.gate_layer_norm\.", ".fusion_norm."),
    (r"\.moe_layer\.gate\.w_gate\.", ".moe.router."),
    (r"\.moe_layer\.experts\.(\d+)\.ff\.0\.0\.", r".moe.experts.\1.fc_in."),
    (r"\.moe_layer\.experts\.(\d+)\.ff\.2\.", r".moe.experts.\1.fc_out."),
]
_IGNORED = [r"^cross_module\.context_layer_norm\.", r"^clip\."]
# Wrappers around the names: the fixture's `weights.`, Lightning's `matcher.` / `encoder.`, DataParallel's `module.`.
_WRAPPER_PREFIX = re.compile(r"^(weights|state_dict|model|module|matcher|encoder)\.")


def strip_wrapper_prefixes(key: str) -> str:
    while _WRAPPER_PREFIX.match(key):
        key = _WRAPPER_PREFIX.sub("", key, count=1)
    return key


def reference_key_to_ours(key: str) -> str | None:
    """Our parameter name for a reference one; None if it is deliberately ignored. Raises KeyError if unknown."""
    key = strip_wrapper_prefixes(key)
    if any(re.match(pattern, key) for pattern in _IGNORED):
        return None
    renamed = key
    for pattern, replacement in _RENAMES:
        renamed = re.sub(pattern, replacement, renamed)
    if renamed == key:
        raise KeyError(f"not a parameter of the public MMoE matcher or its image projections: {key!r}")
    return renamed


def convert_reference_state_dict(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Reference state dict -> (our state dict, reference keys ignored). Unknown keys raise KeyError."""
    ours, ignored = {}, []
    for key, value in state.items():
        new_key = reference_key_to_ours(key)
        if new_key is None:
            ignored.append(key)
        elif new_key in ours:
            raise KeyError(f"two reference keys map to {new_key!r} (the last was {key!r})")
        else:
            ours[new_key] = value
    return ours, ignored


def read_reference_state_dict(path: Union[str, Path], allow_pickle: bool = False) -> dict[str, Tensor]:
    """Tensors of a reference checkpoint: `.safetensors`, or a torch/Lightning file (`.ckpt`, `.pt`).

    Torch files are read with weights_only=True. Lightning checkpoints also pickle the run's OmegaConf
    hyper-parameters, which that refuses; pass allow_pickle=True only for a file you trust.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        checkpoint: Any = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as error:  # torch raises UnpicklingError and others for disallowed globals
        raise ValueError(
            f"could not read {path} with weights_only=True ({type(error).__name__}: {error}); it pickles more "
            "than tensors. Re-save its state_dict as safetensors, or pass allow_pickle=True if you trust it"
        ) from error
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    return {key: value for key, value in checkpoint.items() if isinstance(value, Tensor)}


def config_from_reference_dims(dims: Mapping[str, Any], **overrides: Any) -> MMoEConfig:
    """MMoEConfig from the public YAML `model:` section (or the fixture's `dims`), in reference gate mode."""
    unknown = set(dims) - set(REFERENCE_DIM_NAMES) - UNUSED_REFERENCE_DIMS
    if unknown:
        raise ValueError(f"unknown reference dims: {sorted(unknown)}")
    values: dict[str, Any] = {ours: int(dims[theirs]) for theirs, ours in REFERENCE_DIM_NAMES.items() if theirs in dims}
    values.update(gate_mode="reference", aux_loss_weight=0.0, expert_mult=4, dropout=0.0)
    values.update(overrides)
    return MMoEConfig(**values)


def load_reference_weights(model: MMoEMatcher, source: Union[str, Path, Mapping[str, Tensor]],
                           allow_pickle: bool = False) -> list[str]:
    """Load reference weights (state dict or checkpoint path) strictly; returns the reference keys ignored."""
    state = read_reference_state_dict(source, allow_pickle) if isinstance(source, (str, Path)) else source
    ours, ignored = convert_reference_state_dict(state)
    model.load_state_dict(ours, strict=True)
    return ignored


def matcher_from_reference(source: Union[str, Path, Mapping[str, Tensor]], dims: Mapping[str, Any],
                           allow_pickle: bool = False, **overrides: Any) -> MMoEMatcher:
    """A reference-mode matcher (eval mode) with the published weights loaded."""
    model = MMoEMatcher(config_from_reference_dims(dims, **overrides))
    load_reference_weights(model, source, allow_pickle)
    return model.eval()
