"""Checkpoints as a folder: `model.safetensors` (weights) + `config.json` (config and extra info). No pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import torch
from safetensors.torch import load_file, save_file

from .config import MMoEConfig
from .mmoe import MMoEMatcher

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "mmoe-matcher"
FORMAT_VERSION = 1


class CheckpointConfigMismatch(ValueError):
    """The checkpoint was trained with a config other than the expected one."""


class LoadedCheckpoint(NamedTuple):
    model: MMoEMatcher
    config: MMoEConfig
    extra: dict[str, Any]


def save_checkpoint(path_dir: Union[str, Path], model: MMoEMatcher, config: Optional[MMoEConfig] = None,
                    extra: Optional[dict[str, Any]] = None) -> Path:
    """Write weights and config (+ JSON-serialisable `extra`, e.g. epoch, metrics) into path_dir."""
    config = config or model.config
    if config != model.config:
        raise ValueError("config differs from the model's own config")
    path_dir = Path(path_dir)
    path_dir.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    save_file(tensors, str(path_dir / WEIGHTS_FILE), metadata={"format": FORMAT})
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict(), "extra": extra or {}}
    (path_dir / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path_dir


def read_checkpoint_config(path_dir: Union[str, Path]) -> tuple[MMoEConfig, dict[str, Any]]:
    """(config, extra) of a checkpoint folder, without loading weights."""
    config_path = Path(path_dir) / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in checkpoint folder {path_dir}")
    document = json.loads(config_path.read_text())
    if document.get("format") != FORMAT:
        raise ValueError(f"{config_path} is not an {FORMAT} checkpoint (format={document.get('format')!r})")
    if document.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{config_path} has format_version {document.get('format_version')}, "
                         f"this code reads {FORMAT_VERSION}")
    return MMoEConfig.from_dict(document["config"]), document.get("extra", {})


def config_differences(found: MMoEConfig, expected: MMoEConfig) -> list[str]:
    """'field: checkpoint=..., expected=...' for each differing field."""
    found_dict, expected_dict = found.to_dict(), expected.to_dict()
    return [f"{name}: checkpoint={found_dict[name]!r}, expected={expected_dict[name]!r}"
            for name in expected_dict if found_dict[name] != expected_dict[name]]


def load_checkpoint(path_dir: Union[str, Path], expected_config: Optional[MMoEConfig] = None,
                    device: Union[str, torch.device] = "cpu") -> LoadedCheckpoint:
    """Load a checkpoint folder strictly (every weight present, none extra, same shapes).

    Raises CheckpointConfigMismatch naming each differing field when expected_config is given and differs.
    """
    config, extra = read_checkpoint_config(path_dir)
    if expected_config is not None:
        differences = config_differences(config, expected_config)
        if differences:
            raise CheckpointConfigMismatch(f"checkpoint {path_dir} does not match the expected config: "
                                           + "; ".join(differences))
    model = MMoEMatcher(config)
    model.load_state_dict(load_file(str(Path(path_dir) / WEIGHTS_FILE), device=str(device)), strict=True)
    return LoadedCheckpoint(model.to(device), config, extra)
