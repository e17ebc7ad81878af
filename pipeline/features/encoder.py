"""The open_clip feature extractor: pooled embeddings and per-token hidden states of text and images.

Any open_clip ViT architecture works, with weights from a ``pretrained`` tag (``ViT-B-32`` / ``openai``),
a local ``checkpoint`` file, or random initialisation from a fixed ``seed`` (the offline default, on the
small ``mel-tiny-clip`` architecture registered from ``model_configs/``; such an encoder is UNTRAINED and
is announced as such).

What is produced per item, the inputs of the MMoE matcher as the reference takes them from HF ``CLIPModel``,
as a ``model.MMoEFeatures`` batch on the CPU in the stored float type (stored columns in brackets):

- ``text_embeds  [D]``      (``text_pooled``) projected text embedding at the EOT token. Raw: NOT
                             L2-normalised (the reference normalises; consumers that need cosine similarity
                             normalise).
- ``text_tokens  [L, Wt]``  text tower last hidden states AFTER ``ln_final`` (HF ``text_model`` output 0),
                             first L positions; positions past the text's EOT hold zeros.
- ``text_mask    [L]``      True for SOT..EOT positions inside the first L, False for padding.
- ``image_embeds [D]``      (``image_pooled``) projected image embedding (``ln_post`` then ``proj``), raw
                             like text_embeds.
- ``image_tokens [P+1, Wv]`` vision tower last hidden states, class token first, BEFORE ``ln_post``
                             (HF ``vision_model`` output 0 is the encoder output, without the post-norm).

Text is tokenized at the model's context length (77 for CLIP), so the pooled vector reads up to 77 tokens
while the store keeps the first L token states. With a causal text tower the states of the first L positions
do not depend on what follows them, so this equals tokenizing at L for every text that fits in L tokens. The
text tower runs only up to the longest text of the batch (for CLIP-style towers), and each row's states past
its own EOT are zeroed, so an item's features do not depend on which items share its batch.

Items without an image get CLIP's features of the zero image tensor (as the paper feeds it) and
``has_image = False``. That output is the same for every such item, so it is computed once at load time.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import text_global_pool
from torchvision.transforms import Compose, Normalize, ToTensor

from model.features import MMoEFeatures
from pipeline.errors import MELUserError
from pipeline.features.schema import batch_dims
from pipeline.features.settings import EncoderSpec


open_clip.add_model_config(Path(__file__).with_name("model_configs"))

BATCH_ROWS = 8  # encoder batches are padded to a multiple of this (see ClipEncoder._encode_images)

log = logging.getLogger(__name__)


@dataclass
class TokenizedText:
    tokens: torch.Tensor  # [context_length] int64, zero padded
    length: int  # real tokens (SOT..EOT) in `tokens`
    untruncated: int | None  # tokens the whole text needs, when the tokenizer can tell


def tokenize(tokenizer, text: str, context_length: int) -> TokenizedText:
    """Token ids at the model's context length, and whether the text had to be cut."""
    if isinstance(tokenizer, SimpleTokenizer) and tokenizer.reduction_fn is None:
        ids = [tokenizer.sot_token_id, *tokenizer.encode(text), tokenizer.eot_token_id]
        untruncated = len(ids)
        if len(ids) > context_length:  # as open_clip truncates: keep the head, end with EOT
            ids = ids[:context_length]
            ids[-1] = tokenizer.eot_token_id
        tokens = torch.zeros(context_length, dtype=torch.long)
        tokens[: len(ids)] = torch.tensor(ids)
        return TokenizedText(tokens, len(ids), untruncated)
    tokens = tokenizer([text], context_length=context_length)[0]
    pad = getattr(getattr(tokenizer, "tokenizer", None), "pad_token_id", None) or 0
    length = int((tokens != pad).sum())
    return TokenizedText(tokens, length, None if length >= context_length else length)


def pil_to_uint8(image) -> torch.Tensor:
    """An RGB PIL image as a uint8 [3, H, W] tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)))


def split_preprocess(preprocess):
    """open_clip's preprocessing as (PIL -> uint8 [3, H, W] transform, mean, std).

    The float conversion and normalisation (ToTensor, Normalize) move to the encoder, batched on its
    device: DataLoader workers then send uint8 pixels, a quarter of the bytes, and spend 3 ms less per
    image on a CPU. A pipeline of another shape is kept whole (mean and std None).
    """
    steps = list(getattr(preprocess, "transforms", []))
    if len(steps) >= 2 and isinstance(steps[-1], Normalize) and isinstance(steps[-2], ToTensor):
        mean, std = (torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)
                     for values in (steps[-1].mean, steps[-1].std))
        return Compose([*steps[:-2], pil_to_uint8]), mean, std
    return preprocess, None, None


class ClipEncoder:
    """A loaded open_clip model with its tokenizer and image preprocessing.

    ``image_transform`` (run in DataLoader workers) gives uint8 pixels; ``encode`` normalises them.
    """

    def __init__(self, spec: EncoderSpec, model, preprocess, tokenizer, device: torch.device):
        self.spec = spec
        self.model = model
        self.preprocess = preprocess
        self.image_transform, mean, std = split_preprocess(preprocess)
        self._mean = mean.to(device) if mean is not None else None
        self._std = std.to(device) if std is not None else None
        self.tokenizer = tokenizer
        self.device = device
        self.autocast_dtype = spec.autocast_dtype(device)
        self.context_length = int(model.context_length)
        size = open_clip.get_model_preprocess_cfg(model)["size"]
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        # The causal CLIP text tower can stop at the batch's longest text; other towers run in full.
        self._short_text = (
            isinstance(model, open_clip.CLIP) and isinstance(tokenizer, SimpleTokenizer)
            and model.text_pool_type == "argmax"
        )
        self._zero_image = self._encode_images(torch.zeros(1, 3, *self.image_size))
        self.dims = self._probe_dims()

    @classmethod
    def load(cls, spec: EncoderSpec, logger=log) -> "ClipEncoder":
        spec.validate()
        device = spec.torch_device()
        try:
            with torch.random.fork_rng(devices=[]):  # the seed fixes the weights without touching global state
                torch.manual_seed(spec.seed)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    spec.arch, pretrained=spec.pretrained or spec.checkpoint or None, device="cpu"
                )
        except (RuntimeError, OSError, ValueError, KeyError) as error:
            raise MELUserError(
                f"Could not load open_clip {spec.arch!r} with weights {spec.weights()} ({error}); "
                f"check the encoder settings arch, pretrained and checkpoint."
            ) from None
        model = model.to(device).eval()
        try:
            encoder = cls(spec, model, preprocess, open_clip.get_tokenizer(spec.arch), device)
        except (AssertionError, NotImplementedError, AttributeError, KeyError) as error:
            raise MELUserError(
                f"open_clip {spec.arch!r} does not give per-token features through forward_intermediates "
                f"({type(error).__name__}: {error}); use a ViT architecture such as ViT-B-32."
            ) from None
        if spec.untrained:
            logger.warning(
                f"UNTRAINED encoder: {spec.arch} with random-init weights (seed={spec.seed}). "
                "Its features carry no learned meaning; set the encoder setting pretrained or checkpoint for real "
                "use."
            )
        logger.info(f"Loaded {spec.arch} ({spec.weights()}) on {device}, autocast {encoder.autocast_dtype}; dims {encoder.dims}.")
        return encoder

    def _probe_dims(self) -> dict:
        sample = tokenize(self.tokenizer, "", self.context_length)
        return batch_dims(self.encode(sample.tokens[None], torch.tensor([sample.length]),
                                      torch.zeros(0, 3, *self.image_size), torch.tensor([False])))

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def encode(self, tokens: torch.Tensor, lengths: torch.Tensor, images: torch.Tensor,
               has_image: torch.Tensor) -> MMoEFeatures:
        """Encode a batch: ``tokens`` [B, C], ``lengths`` [B], ``images`` [n, 3, H, W] (uint8 from
        ``image_transform``, or normalised floats) for the n rows with ``has_image`` True, in row order;
        the other rows get the zero-image features. The model runs in inference mode; the returned
        tensors are plain ones (built outside it), so callers may edit them."""
        text_embeds, text_tokens, text_mask = self._encode_text(tokens, lengths)
        batch = tokens.shape[0]
        image_embeds, image_tokens = (np.broadcast_to(zero, (batch, *zero.shape[1:])).copy()
                                      for zero in self._zero_image)
        has_image = has_image.numpy().astype(bool)
        if has_image.any():
            image_embeds[has_image], image_tokens[has_image] = self._encode_images(self.normalize(images))
        return MMoEFeatures(*map(torch.from_numpy, (text_embeds, text_tokens, image_embeds, image_tokens)),
                            text_mask=torch.from_numpy(text_mask), has_image=torch.from_numpy(has_image))

    @torch.inference_mode()
    def _encode_text(self, tokens: torch.Tensor, lengths: torch.Tensor):
        L, count = self.spec.text_tokens, tokens.shape[0]
        tokens, lengths = _pad_rows(tokens), _pad_rows(lengths)  # as images, see _encode_images
        tokens = tokens.to(self.device, non_blocking=True)
        lengths = lengths.to(self.device)
        with self._autocast():
            if self._short_text:
                states, pooled = self._clip_text_forward(tokens[:, : int(lengths.max())])
            else:
                out = self.model.forward_intermediates(text=tokens, text_indices=1, normalize=False,
                                                       normalize_intermediates=True)
                states, pooled = out["text_intermediates"][-1], out["text_features"]
        states = states[:, :L]
        if states.shape[1] < L:
            states = torch.nn.functional.pad(states, (0, 0, 0, L - states.shape[1]))
        mask = torch.arange(L, device=self.device)[None, :] < lengths[:, None]
        states = states * mask[..., None].to(states.dtype)
        return _stored(pooled[:count]), _stored(states[:count]), mask[:count].cpu().numpy()

    def _clip_text_forward(self, tokens: torch.Tensor):
        """open_clip CLIP.encode_text on the first n positions, returning the token states too."""
        model, n = self.model, tokens.shape[1]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:n].to(cast)
        mask = model.attn_mask[:n, :n] if model.attn_mask is not None else None
        x = model.ln_final(model.transformer(x, attn_mask=mask))
        pooled = text_global_pool(x, tokens, "argmax")
        if isinstance(model.text_projection, torch.nn.Linear):
            pooled = model.text_projection(pooled)
        elif model.text_projection is not None:
            pooled = pooled @ model.text_projection
        return x, pooled

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels from ``image_transform`` -> the model's input, as ToTensor + Normalize compute it."""
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = (images.float().div_(255) - self._mean) / self._std
        return images

    @torch.inference_mode()
    def _encode_images(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Normalised images -> (pooled, tokens).

        The batch is padded with zero rows to a multiple of BATCH_ROWS: CPU matmul kernels pick their blocking
        by the row count, and a pooled vector computed among 5 images can differ in the last float16 bit from
        the same image's among 8. Padded, an item's features do not depend on how many share its batch (so a
        KB shard holds what one process would have encoded). Texts are padded the same way."""
        count = images.shape[0]
        images = _pad_rows(images).to(self.device, non_blocking=True)
        with self._autocast():
            out = self.model.forward_intermediates(
                image=images, image_indices=1, normalize=False, normalize_intermediates=False,
                image_output_fmt="NLC", image_output_extra_tokens=True,
            )
        tokens = out["image_intermediates"][-1]
        prefix = out.get("image_intermediates_prefix")
        if prefix:  # the class token first, as HF's last_hidden_state has it
            tokens = torch.cat([prefix[-1], tokens], dim=1)
        return _stored(out["image_features"][:count]), _stored(tokens[:count])


def _pad_rows(batch: torch.Tensor) -> torch.Tensor:
    """`batch` with zero rows appended up to a multiple of BATCH_ROWS."""
    padding = -batch.shape[0] % BATCH_ROWS
    return torch.cat([batch, batch.new_zeros((padding, *batch.shape[1:]))]) if padding else batch


def _stored(tensor: torch.Tensor) -> np.ndarray:
    return tensor.to(torch.float16).cpu().numpy()  # cast on the device: half the bytes to copy


_LOADED: dict[tuple, ClipEncoder] = {}


def load_encoder(spec: EncoderSpec, logger=log) -> ClipEncoder:
    """``ClipEncoder.load`` memoised on the identity (checkpoint content included), so repeated runs in one
    process (tests, the in-process executor) do not rebuild the model; only the latest one is kept."""
    key = (spec.identity_json(), str(spec.torch_device()), spec.precision)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = ClipEncoder.load(spec, logger)
    elif spec.untrained:
        logger.warning(f"UNTRAINED encoder: {spec.arch} with random-init weights (seed={spec.seed}).")
    return _LOADED[key]
