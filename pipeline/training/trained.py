"""The lake's trained model: which one is current, its identity, and loading it for scoring.

`mmoe_model` records the report of the model it trained (or reused) at `catalog.current_model_path`;
evaluation, the trained index and linking read that model from there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from model import CheckpointConfigMismatch, load_checkpoint
from pipeline import catalog
from pipeline.atomic import write_text_atomic
from pipeline.errors import MELUserError
from pipeline.features.store import FeatureStore
from pipeline.hashing import hash_file, hash_strings
from pipeline.lake import Lake
from pipeline.training.settings import TrainingSettings

log = logging.getLogger(__name__)


def current_model(lake: Lake) -> dict:
    """The report of the last model trained for this lake (what `evaluation` scores with)."""
    path = catalog.current_model_path(lake)
    if not path.is_file():
        raise MELUserError(f"No trained MMoE model in the lake (no {path}); materialize mmoe_model first.")
    return json.loads(path.read_text(encoding="utf-8"))


def record_current_model(lake: Lake, report: dict) -> None:
    """Make `report` (a TrainingReport dict) the lake's current model."""
    write_text_atomic(catalog.current_model_path(lake), json.dumps(report, indent=1, sort_keys=True))


def model_identity(model: dict) -> str:
    """The trained run's fingerprint and the digest of its weights: a run retrained under the same fingerprint
    (its folder deleted, or on CUDA, where runs are close but not bit-identical) invalidates the rows."""
    weights = Path(model["checkpoint"]) / "model.safetensors"
    return hash_strings([model["fingerprint"], hash_file(weights) if weights.is_file() else ""])


def load_matcher(model: dict, settings: TrainingSettings | None, entities: FeatureStore, device, logger=log,
                 inputs_fingerprints: dict | None = None):
    """The trained matcher of `model` (a TrainingReport dict) in eval mode, refused with one sentence when it
    was trained on features of another encoder than the entity store's or its checkpoint is missing.

    With `settings` the checkpoint must have the configuration they describe; without, it is loaded with its
    own (linking uses the model as it was trained, whatever the training settings say now)."""
    trained_on = model.get("encoder")
    if trained_on and trained_on != entities.encoder:
        raise MELUserError(f"The trained model at {model['checkpoint']} was trained on features of another encoder "
                           f"({trained_on.get('arch')}, {trained_on.get('weights')}) than the current feature stores "
                           f"({entities.encoder.get('arch')}, {entities.encoder.get('weights')}); "
                           "re-materialize mmoe_model.")
    if inputs_fingerprints is not None and model.get("inputs") and model["inputs"] != inputs_fingerprints:
        logger.warning("The train/dev mentions, their features or candidates changed since the model was trained; "
                       "evaluating the trained model on the current ones (re-materialize mmoe_model to retrain).")
    try:
        expected = settings.model_config(entities.dims) if settings is not None else None
        loaded = load_checkpoint(model["checkpoint"], expected, device=device)
    except CheckpointConfigMismatch as error:
        raise MELUserError(f"{error}; the training settings or the features changed since it was trained: "
                           "re-materialize mmoe_model.") from None
    except FileNotFoundError:
        raise MELUserError(f"The trained model's checkpoint {model['checkpoint']} is missing; "
                           "re-materialize mmoe_model.") from None
    return loaded.model.eval()
