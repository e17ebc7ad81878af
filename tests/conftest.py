"""Shared test helpers: a tiny dataset in the MIMIC layout, written field by field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.lake import Lake


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
