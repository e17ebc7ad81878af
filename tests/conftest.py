"""Shared test helpers: a tiny dataset in the MIMIC layout, written field by field; the WikiData and LLM
fixtures that several test modules use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.describe.backends import LLMSettings, hf_folder, locate_model
from pipeline.lake import Lake
from pipeline.training.data import Inputs
from pipeline.training.settings import TrainingSettings
from pipeline.training.train import train_model
from pipeline.training.trainer import TrainingReport
from pipeline.wikidata import LookupCache
from synthetic.stores import build_synthetic_lake
from tests.wikidata_fakes import FakeClock, LocalWikidata


def write_image(path: Path, color=(200, 30, 30), size=(32, 32), fmt="JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, fmt)
    return path


class MimicDataset:
    """Builds a small valid MIMIC dataset; tests then break one thing at a time.

    Three KB entities, two of them named "Jordan"; one mention per split pointing at them.
    """

    def __init__(self, root: Path, prefix: str = "WIKIMEL"):
        self.root = root
        self.prefix = prefix
        self.kb = [
            {"id": 0, "qid": "Q41421", "type": "entity", "entity_name": "Jordan",
             "desc": "American basketball player", "attr": "Occupation basketball player",
             "instance": "human", "image_list": ["Q41421_0.jpg"]},
            {"id": 1, "qid": "Q810", "type": "entity", "entity_name": "Jordan",
             "desc": "country in Western Asia", "instance": "sovereign state", "image_list": ["Q810_0.jpg"]},
            {"id": 2, "qid": "Q1", "type": "entity", "entity_name": "Universe",
             "desc": "totality of space and time", "image_list": []},
        ]
        self.qid2id = {"Q41421": 0, "Q810": 1, "Q1": 2}
        self.splits = {
            "train": [{"id": 10, "sentence": "Jordan scored 40 points.", "mentions": "Jordan",
                       "entities": "Jordan", "imgPath": "10.jpg", "answer": "Q41421"}],
            "dev": [{"id": 20, "sentence": "Amman is the capital of Jordan.", "mentions": "Jordan",
                     "entities": "Jordan", "imgPath": "20.jpg", "answer": "Q810"}],
            "test": [{"id": 30, "sentence": "The universe is expanding.", "mentions": "universe",
                      "entities": "Universe", "imgPath": "", "answer": "Q1"}],
        }
        self.mention_image_dir = "mention_image"

    def write_json(self) -> Path:
        """Write the JSON files only (images stay as they are)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for split, records in self.splits.items():
            (self.root / f"{self.prefix}_{split}.json").write_text(json.dumps(records))
        (self.root / "kb_entity.json").write_text(json.dumps(self.kb))
        (self.root / "qid2id.json").write_text(json.dumps(self.qid2id))
        return self.root

    def write(self) -> Path:
        """Write the JSON files and an image for every record that names one."""
        self.write_json()
        (self.root / "kb_image").mkdir(exist_ok=True)
        for record in self.kb:
            for name in record["image_list"]:
                if not (self.root / "kb_image" / name).exists():
                    write_image(self.root / "kb_image" / name, color=(30, 30, 200))
        (self.root / self.mention_image_dir).mkdir(exist_ok=True)
        for records in self.splits.values():
            for record in records:
                name = record.get("imgPath") if isinstance(record, dict) else None
                target = self.root / self.mention_image_dir / (name or "")
                if isinstance(name, str) and name and ".." not in name and not target.exists():
                    write_image(target)
        return self.root


@pytest.fixture
def dataset(tmp_path) -> MimicDataset:
    return MimicDataset(tmp_path / "dataset")


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(tmp_path / "lake")


@pytest.fixture(scope="module")
def instance():
    """One Dagster instance for a module (runs of different lakes do not interact); a module that needs a fresh
    one per test defines its own `instance` fixture."""
    import dagster as dg

    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny tensors: one thread is fastest, and immune to a busy second core. Module scope, so that a module's
    fixtures that train run under it too; modules ask for it with `pytestmark = usefixtures(...)`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def wikidata():
    """The WikiData API on a local server (`tests.wikidata_fakes.LocalWikidata`)."""
    with LocalWikidata() as server:
        yield server


@pytest.fixture
def lookup_cache(tmp_path):
    """An empty WikiData lookup cache."""
    with LookupCache(tmp_path / "wikidata.duckdb") as cache:
        yield cache


@pytest.fixture
def clock():
    """The API client's clock and sleep: waits are recorded, nothing sleeps."""
    return FakeClock()


@pytest.fixture(scope="session")
def smol_folder(request, tmp_path_factory) -> Path:
    """The bundled GGUF as an HF folder, kept in pytest's cache (a temporary folder without one)."""
    cache = getattr(request.config, "cache", None)
    export_root = cache.mkdir("describe-models") if cache else tmp_path_factory.mktemp("describe-models")
    return hf_folder(locate_model(LLMSettings()), export_root, "transformers")


def candidate_rows(mention_id: str, hits: list[tuple[str, str | None]]) -> list[dict]:
    """`wikidata_candidates` rows of one mention: (qid, description) per candidate, best first."""
    return [dict(mention_id=mention_id, search="jordan", rank=rank, qid=qid, label="Jordan", description=text,
                 match="label", source="test") for rank, (qid, text) in enumerate(hits)]


# -- MMoE training on a synthetic lake (tests/test_training_*.py, tests/test_evaluation_scoring.py) ---------------

SMALL_TRAINING = TrainingSettings(hidden_dim=8, epochs=2, batch_size=16, rerank_k=20, lr=3e-3, progress=False,
                                  device="cpu")  # seconds per training on the synthetic lake


def train_into(lake: Lake, settings: TrainingSettings, runs_dir: Path, **kwargs) -> TrainingReport:
    """Train on the lake's inputs into `runs_dir`; the lake's current model stays as it is."""
    return train_model(Inputs.open(lake), settings, runs_dir, **kwargs)


@pytest.fixture(scope="module")
def synthetic_lake(tmp_path_factory) -> Lake:
    """A synthetic lake (stores, mentions, entity index, mention_candidates) that a module's tests read."""
    return build_synthetic_lake(Lake(tmp_path_factory.mktemp("lake")))


def materialization(result, asset: str):
    """The one materialization of `asset` in the result of `dg.materialize` (or of a job run)."""
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == asset]
    return event.step_materialization_data.materialization


def metadata_of(result, asset: str) -> dict:
    """`asset`'s materialization metadata as plain values, as the UI shows them."""
    return {name: value.value for name, value in materialization(result, asset).metadata.items()}


def failure_message(result) -> str:
    """The error message of the one step that failed in `result`."""
    [failure] = [e for e in result.all_events if e.is_step_failure]
    return failure.step_failure_data.error.message


def data_version(result, asset: str) -> str:
    """The data version `asset`'s materialization in `result` recorded."""
    return materialization(result, asset).tags["dagster/data_version"]
