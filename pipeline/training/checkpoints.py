"""A training run on disk: one folder per finished epoch, and a state file saying which ones count.

Layout of a run folder (named by the run's fingerprint, see `train.py`)::

    training.json            committed last, atomically: finished epochs, best epoch, history, finished flag
    epochs/epoch-0003/       model.safetensors + config.json (model.save_checkpoint: weights and MMoEConfig)
                             optimizer.safetensors   AdamW moments and step counts, one tensor per entry
                             optimizer.json          parameter groups, loss-scaler state

No pickle anywhere: tensors go to safetensors, everything else to JSON. An epoch folder is written under a
temporary name and renamed into place, then `training.json` is replaced; a crash at any point leaves the
previous `training.json` naming complete folders, and a resumed run continues after the last epoch it names.
Only the last and the best epoch folders are kept.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model import LoadedCheckpoint, MMoEConfig, MMoEMatcher, load_checkpoint, save_checkpoint
from pipeline.atomic import TEMP_MARKER, write_text_atomic

STATE_FILE = "training.json"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
STATE_FORMAT = 1


class RunFolder:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.epochs = self.root / "epochs"

    def read_state(self) -> dict | None:
        path = self.root / STATE_FILE
        if not path.is_file():
            return None
        state = json.loads(path.read_text(encoding="utf-8"))
        return state if state.get("format") == STATE_FORMAT else None

    def epoch_dir(self, name: str) -> Path:
        return self.epochs / name

    def save_epoch(self, epoch: int, model: MMoEMatcher, optimizer: torch.optim.Optimizer, scaler_state: dict | None,
                   state: dict) -> None:
        """Write the epoch's folder, then commit `state` (which must name it as "last") as training.json."""
        name = epoch_name(epoch)
        self.epochs.mkdir(parents=True, exist_ok=True)
        temp = self.epochs / f".{name}{TEMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            save_checkpoint(temp, model, extra={"epoch": epoch})
            save_optimizer(temp, optimizer, scaler_state)
            target = self.epoch_dir(name)
            if target.exists():  # left by a run that crashed before committing training.json
                shutil.rmtree(target)
            os.replace(temp, target)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        self.commit_state({**state, "last": name})

    def commit_state(self, state: dict) -> None:
        state = {**state, "format": STATE_FORMAT}
        write_text_atomic(self.root / STATE_FILE, json.dumps(state, indent=1, sort_keys=True))
        self._prune(keep={state.get("last"), state.get("best")})

    def _prune(self, keep: set) -> None:
        for folder in self.epochs.iterdir() if self.epochs.is_dir() else []:
            if folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    def load_model(self, name: str, expected: MMoEConfig | None = None, device="cpu") -> LoadedCheckpoint:
        return load_checkpoint(self.epoch_dir(name), expected, device=device)

    def restore(self, name: str, model: MMoEMatcher, optimizer: torch.optim.Optimizer) -> dict | None:
        """Load weights and optimizer state of epoch folder `name` in place; return the loss-scaler state."""
        folder = self.epoch_dir(name)
        loaded = load_checkpoint(folder, model.config, device="cpu")
        model.load_state_dict(loaded.model.state_dict())
        return load_optimizer(folder, optimizer)


def epoch_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


def save_optimizer(folder: Path, optimizer: torch.optim.Optimizer, scaler_state: dict | None) -> None:
    """AdamW state without pickle: tensors as `state.<param>.<name>`, parameter groups as JSON."""
    state_dict = optimizer.state_dict()
    tensors = {f"state.{param}.{name}": value.detach().cpu().contiguous()
               for param, entries in state_dict["state"].items() for name, value in entries.items()}
    save_file(tensors, str(folder / OPTIMIZER_TENSORS))
    document = {"param_groups": state_dict["param_groups"], "scaler": scaler_state}
    (folder / OPTIMIZER_JSON).write_text(json.dumps(document, indent=1))


def load_optimizer(folder: Path, optimizer: torch.optim.Optimizer) -> dict | None:
    document = json.loads((folder / OPTIMIZER_JSON).read_text())
    state: dict[int, dict] = {}
    for key, value in load_file(str(folder / OPTIMIZER_TENSORS)).items():
        _, param, name = key.split(".", 2)
        state.setdefault(int(param), {})[name] = value
    groups = [{**group, "betas": tuple(group["betas"])} if "betas" in group else group
              for group in document["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return document["scaler"]
