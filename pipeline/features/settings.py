"""How features are extracted: ``EncoderSpec``, the open_clip encoder and how to run it, each field documented.

``ClipResource`` is generated from it (``assets.resources.settings_resource``). ``identity()`` is the part that
decides the stored values (it keys every item's features); device, precision, batch size and workers do not.
open_clip is imported on first use (its import takes seconds; the code location imports this module).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from pipeline.devices import resolve_device
from pipeline.features.schema import STORED_FLOAT
from pipeline.hashing import hash_file
from pipeline.settings import refuse, setting

DEFAULT_ARCH = "mel-tiny-clip"  # registered from model_configs/: the offline, untrained default
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
EXTRACTION_VERSION = "1"  # bump when what is stored for the same model and input changes


@lru_cache(maxsize=1)
def _open_clip():
    import open_clip

    open_clip.add_model_config(Path(__file__).with_name("model_configs"))
    return open_clip


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder to run and how. The default is an UNTRAINED random-init ``mel-tiny-clip`` (offline, fast on
    a CPU, for tests and the demo); for real use set e.g. ``arch="ViT-B-32", pretrained="openai"`` or
    ``checkpoint=<file>``."""

    arch: str = setting(DEFAULT_ARCH, "open_clip architecture, e.g. ViT-B-32.")
    pretrained: str = setting("", "open_clip pretrained tag, e.g. openai (downloads once).")
    checkpoint: str = setting("", "Local weights file; identified by its content hash.")
    seed: int = setting(0, "Seed of the random initialisation when no weights are set.")
    device: str = setting("auto", "auto (cuda when available), cpu or cuda[:n].")
    precision: str = setting("auto", "Autocast: auto (fp16 on cuda, fp32 on cpu), fp32, fp16, bf16. Features "
                             "are stored as float16 either way.")
    batch_size: int = setting(64, "Items per forward pass.")
    num_workers: int = setting(2, "DataLoader processes decoding images; 0 = in the main process.")
    text_tokens: int = setting(50, "L: text token states kept per item.")

    def __post_init__(self):
        if self.batch_size < 1 or self.num_workers < 0:
            refuse(self, f"batch_size must be >= 1 and num_workers >= 0 "
                               f"(got {self.batch_size} and {self.num_workers}).")

    @property
    def bundles_weights(self) -> bool:
        """``hf-hub:org/repo`` and ``local-dir:path`` names bring their own weights (open_clip ignores pretrained)."""
        return ":" in self.arch

    @property
    def untrained(self) -> bool:
        return not (self.pretrained or self.checkpoint or self.bundles_weights)

    def validate(self) -> None:
        open_clip = _open_clip()

        if open_clip.get_model_config(self.arch) is None and not self.bundles_weights:
            refuse(self, f"arch {self.arch!r} is not an open_clip architecture "
                   f"(see open_clip.list_models(), e.g. 'ViT-B-32', or the offline default {DEFAULT_ARCH!r}).")
        if self.pretrained and self.checkpoint:
            refuse(self, "pretrained and checkpoint are both set; set only one of them.")
        if self.checkpoint and not Path(self.checkpoint).is_file():
            refuse(self, f"checkpoint {self.checkpoint} is not a file.")
        if self.pretrained and Path(self.pretrained).is_file():
            refuse(self, f"pretrained {self.pretrained} is a file; set it as checkpoint instead, so its content "
                   "identifies the features.")
        if self.precision not in PRECISIONS:
            refuse(self, f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}.")
        context_length = (open_clip.get_model_config(self.arch) or {}).get("text_cfg", {}).get("context_length", 77)
        if not 1 <= self.text_tokens <= context_length:
            refuse(self, f"text_tokens ({self.text_tokens}) must be between 1 and the context length of "
                   f"{self.arch} ({context_length}).")

    def weights(self) -> str:
        if self.bundles_weights:
            return f"bundled with {self.arch}"
        if self.pretrained:
            return f"pretrained:{self.pretrained}"
        if self.checkpoint:
            return f"checkpoint:{checkpoint_digest(Path(self.checkpoint))}"
        return f"random-init seed={self.seed}"

    def identity(self) -> dict:
        """Everything that decides the stored values; part of every content key."""
        self.validate()
        open_clip = _open_clip()
        config = open_clip.get_model_config(self.arch) or {}
        return {
            "arch": self.arch,
            "weights": self.weights(),
            "image_size": config.get("vision_cfg", {}).get("image_size"),
            "text_tokens": self.text_tokens,
            "stored_precision": np.dtype(STORED_FLOAT).name,
            "open_clip": open_clip.__version__,
            "extraction": EXTRACTION_VERSION,
        }

    def identity_json(self) -> str:
        return json.dumps(self.identity(), sort_keys=True)

    def torch_device(self) -> torch.device:
        return resolve_device(self.device, EncoderSpec)

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype, None for plain fp32."""
        precision = self.precision
        if precision == "auto":
            precision = "fp16" if device.type == "cuda" else "fp32"
        if precision == "fp16" and device.type != "cuda":
            refuse(self, "precision 'fp16' needs a CUDA GPU; use 'bf16' or 'fp32' on the CPU.")
        return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def checkpoint_digest(path: Path) -> str:
    stat = path.stat()
    return _digest_of_version(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _digest_of_version(path: str, size: int, mtime_ns: int) -> str:
    return hash_file(Path(path))
