"""The torch device a resource's `device` setting names: auto (CUDA when available), cpu, cuda, cuda:N."""

from __future__ import annotations

import torch

from pipeline.errors import MELUserError


def resolve_device(setting: str, owner: str) -> torch.device:
    """`owner` names the setting in messages, e.g. "ClipResource.device"."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise MELUserError(f"{owner} {setting!r} is not a torch device (use auto, cpu or cuda).") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MELUserError(f"{owner} is 'cuda' but no CUDA GPU is available; use 'auto'.")
    return device
