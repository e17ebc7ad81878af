"""The torch device a `device` setting names: auto (CUDA when available), cpu, cuda, cuda:N."""

from __future__ import annotations

import torch

from pipeline.settings import refuse


def resolve_device(value: str, settings: type) -> torch.device:
    """The device of the `device` field of `settings` (a settings dataclass, named in the error)."""
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except RuntimeError:
        device = None
    if device is None:
        refuse(settings, f"device {value!r} is not a torch device (use auto, cpu or cuda).")
    if device.type == "cuda" and not torch.cuda.is_available():
        refuse(settings, "device is 'cuda' but no CUDA GPU is available; use 'auto'.")
    return device
