"""The demo dataset generator, `synthetic.demo`: what it writes and what it promises.

Read top to bottom, these tests document the format (the MIMIC layout used by
WikiMEL / RichpediaMEL / WikiDiverse, plus a WikiData dump fixture) and the
properties that make the demo a real test of multimodal entity linking:
shared names, same-kind namesakes, images that identify the entity, NIL
mentions, unseen entities, and deliberately broken files.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from synthetic.demo import DEMO_GENERATOR_VERSION, ensure_demo_dataset, generate_demo_dataset, is_complete
from synthetic.demo import dataset as dataset_module
from synthetic.demo.__main__ import main as cli_main
from synthetic.demo.visuals import FOREGROUND_COLOURS
from synthetic.demo.vocabulary import GENERIC_PHRASES, KINDS

SMALL = dict(num_entities=60, num_mentions=120)
TINY = dict(num_entities=20, num_mentions=30)
SPLIT_FILES = ("demo_train.json", "demo_dev.json", "demo_test.json")
MENTION_FIELDS = ["id", "sentence", "mentions", "entities", "imgPath", "answer"]
KB_FIELDS = ["id", "qid", "type", "entity_name", "desc", "attr", "instance", "image_list"]
DUMP = "wikidata/wikidata-demo.json.gz"


# ------------------------------------------------------------------ helpers

@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    generate_demo_dataset(out, seed=0, **SMALL)
    return out


def load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def mentions_of(root: Path) -> list[dict]:
    return [record for name in SPLIT_FILES for record in load(root / name)]


def truth_of(root: Path) -> dict[int, dict]:
    lines = (root / "truth.jsonl").read_text(encoding="utf-8").splitlines()
    return {record["id"]: record for record in map(json.loads, lines)}


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def dump_lines(root: Path) -> list[str]:
    return gzip.decompress((root / DUMP).read_bytes()).decode("utf-8").splitlines()


def dump_entities(root: Path) -> list[dict]:
    """Read the dump the way a streaming reader does: one entity per line, trailing comma stripped."""
    return [json.loads(line.rstrip(",")) for line in dump_lines(root)[1:-1]]


def opens_as_image(path: Path) -> bool:
    lenient, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False  # whatever others set
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except OSError:
        return False
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient


def defect_files(root: Path) -> set[str]:
    return {d["file"] for d in load(root / "defects.json")}


def coverage(pixels: np.ndarray, rgb) -> float:
    """Share of pixels within colour distance 60 of `rgb`."""
    return float((np.linalg.norm(pixels - np.array(rgb, dtype=float), axis=2) < 60).mean())


# ------------------------------------------------------------------ determinism

def test_same_seed_gives_byte_identical_files(demo, tmp_path):
    again = tmp_path / "again"
    generate_demo_dataset(again, seed=0, **SMALL)
    assert file_hashes(again) == file_hashes(demo)


def test_another_seed_gives_different_files(demo, tmp_path):
    other = file_hashes(generate_demo_dataset(tmp_path / "other", seed=1, **SMALL).out_dir)
    for name in ("kb_entity.json", "demo_train.json", DUMP, "truth.jsonl"):
        assert other[name] != file_hashes(demo)[name], name


# ------------------------------------------------------------------ the MIMIC layout

def test_layout_and_field_names_are_the_mimic_ones(demo):
    assert {p.name for p in demo.iterdir()} == {
        *SPLIT_FILES, "kb_entity.json", "qid2id.json", "kb_image", "mention_image", "wikidata",
        "README.md", "truth.jsonl", "defects.json", ".complete"}
    for record in mentions_of(demo):
        assert list(record) == MENTION_FIELDS
        assert isinstance(record["id"], int)
    kb = load(demo / "kb_entity.json")
    for record in kb:
        assert list(record) == KB_FIELDS
        assert record["type"] == "entity" and re.fullmatch(r"Q\d+", record["qid"])
    assert [record["id"] for record in kb] == list(range(len(kb))) and len(kb) == SMALL["num_entities"]
    qid2id_text = (demo / "qid2id.json").read_text()
    assert qid2id_text.count("\n") == 1 and qid2id_text.endswith("\n")
    assert json.loads(qid2id_text) == {record["qid"]: record["id"] for record in kb}


def test_mentions_are_well_formed_and_answers_point_into_the_kb(demo):
    mentions = mentions_of(demo)
    qid2id = load(demo / "qid2id.json")
    kb = load(demo / "kb_entity.json")
    assert len(mentions) == SMALL["num_mentions"]
    assert [len(load(demo / name)) for name in SPLIT_FILES] == [80, 20, 20]
    assert len({m["id"] for m in mentions}) == len(mentions)  # unique across splits
    for m in mentions:
        assert m["answer"] == "nil" or m["answer"] in qid2id
        if m["answer"] != "nil":
            assert m["entities"] == kb[qid2id[m["answer"]]]["entity_name"]
        assert m["mentions"] in m["sentence"]
        assert 8 <= len(m["sentence"].split()) <= 25
    assert 1 <= sum(m["answer"] == "nil" for m in mentions) <= 0.05 * len(mentions)


def test_entities_cross_splits_and_some_test_entities_are_unseen_in_train(demo):
    answers = {name: {m["answer"] for m in load(demo / name)} - {"nil"} for name in SPLIT_FILES}
    train, dev, test = answers.values()
    assert test & train, "most test mentions link to entities also seen in train"
    assert (test | dev) - train, "some link to entities never seen in train"
    truth = truth_of(demo)
    for m in mentions_of(demo):
        if m["answer"] != "nil":
            assert truth[m["id"]]["seen_in_train"] == (m["answer"] in train)


# ------------------------------------------------------------------ images and defects

def test_every_image_file_exists_and_opens_except_the_documented_defects(demo):
    defects = defect_files(demo)
    assert len(defects) == 3
    mentions = mentions_of(demo)
    paths = [f"mention_image/{m['imgPath']}" for m in mentions if m["imgPath"]]
    paths += [f"kb_image/{f}" for e in load(demo / "kb_entity.json") for f in e["image_list"]]
    for path in paths:
        assert opens_as_image(demo / path) == (path not in defects), path
    kinds = {d["kind"]: d["file"] for d in load(demo / "defects.json")}
    assert not (demo / kinds["missing_file"]).exists()
    assert (demo / kinds["truncated_jpeg"]).read_bytes()[:2] == b"\xff\xd8"  # looks like a JPEG, is not whole
    assert (demo / kinds["not_an_image"]).read_bytes().startswith(b"<!DOCTYPE html>")
    without_image = sum(not m["imgPath"] for m in mentions)
    assert 0.05 * len(mentions) <= without_image <= 0.3 * len(mentions)
    assert any(not e["image_list"] for e in load(demo / "kb_entity.json"))


def test_defects_can_be_switched_off(tmp_path):
    root = generate_demo_dataset(tmp_path / "clean", seed=0, defects=False, **TINY).out_dir
    assert load(root / "defects.json") == []
    for path in (root / "kb_image").iterdir():
        assert opens_as_image(path)
    for m in mentions_of(root):
        assert not m["imgPath"] or opens_as_image(root / "mention_image" / m["imgPath"])


def test_mention_images_are_altered_views_of_the_gold_entity(demo):
    """The gold's foreground colour (recorded in truth) dominates the mention image over every
    palette colour the gold does not use, and the gold's KB images show that colour too."""
    kb_hashes = {hashlib.sha256(p.read_bytes()).digest() for p in (demo / "kb_image").iterdir()}
    kb = {e["qid"]: e for e in load(demo / "kb_entity.json")}
    checked = 0
    for truth in truth_of(demo).values():
        image = truth["image"]
        if not image or image["defect"]:
            continue
        path = demo / "mention_image" / image["file"]
        assert hashlib.sha256(path.read_bytes()).digest() not in kb_hashes
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=float)
        signature = image["signature"]
        own = coverage(pixels, signature["fg_rgb"])
        unused = [rgb for name, rgb in FOREGROUND_COLOURS.items()
                  if name not in (signature["fg_colour"], signature["accent_colour"])]
        assert own >= 0.02 and all(own > coverage(pixels, rgb) for rgb in unused), truth["id"]
        if truth["gold"]["in_kb"]:
            for file in kb[truth["gold"]["qid"]]["image_list"]:
                if f"kb_image/{file}" in defect_files(demo):
                    continue
                kb_pixels = np.asarray(Image.open(demo / "kb_image" / file).convert("RGB"), dtype=float)
                assert kb_pixels.shape != pixels.shape or not np.array_equal(kb_pixels, pixels)
                assert coverage(kb_pixels, signature["fg_rgb"]) >= 0.05
        checked += 1
    assert checked >= 0.6 * SMALL["num_mentions"]


# ------------------------------------------------------------------ ambiguity

def test_names_are_shared_even_by_entities_of_the_same_kind(demo):
    truth = truth_of(demo).values()
    kb_by_name: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for record in truth:
        for candidate in record["kb_candidates"]:
            kb_by_name[record["mention"]].add((candidate["qid"], candidate["kind"]))
    shared = [name for name, members in kb_by_name.items() if len(members) >= 2]
    assert len(shared) >= 5
    same_kind_names = [name for name, members in kb_by_name.items()
                       if len({kind for _, kind in members}) < len(members)]
    assert same_kind_names, "some names are shared by two entities of the same kind"
    categories = {record["category"] for record in truth}
    assert categories == {"unique_name", "cross_kind", "same_kind", "nil"}


def test_same_kind_namesakes_stay_decidable_by_a_description_detail_or_the_image(demo):
    kb = {e["qid"]: e for e in load(demo / "kb_entity.json")}
    mentions = {m["id"]: m for m in mentions_of(demo)}
    same_kind = [r for r in truth_of(demo).values() if r["category"] == "same_kind"]
    assert same_kind
    for record in same_kind:
        rivals = [c for c in record["kb_candidates"]
                  if c["kind"] == record["gold"]["kind"] and c["qid"] != record["gold"]["qid"]]
        assert rivals and all(r["description"] != record["gold"]["description"] for r in rivals)
        # Text narrows to the kind; without a usable image only a hinted detail can finish the job.
        has_usable_image = bool(mentions[record["id"]]["imgPath"]) and bool(kb[record["gold"]["qid"]]["image_list"])
        if not has_usable_image:
            assert record["hint"] is not None, record["id"]
    assert any(r["hint"] is None for r in same_kind), "some are left to the image alone"


def test_context_relates_to_descriptions_only_loosely(demo):
    heads = [kind.head for kind in KINDS]
    context_phrases = {kind.key: set(kind.context) for kind in KINDS}
    all_phrases = [p for kind in KINDS for p in kind.context] + list(GENERIC_PHRASES)
    assert len(all_phrases) == len(set(all_phrases)), "a phrase belongs to one kind only"
    for record, mention in zip(truth_of(demo).values(), mentions_of(demo)):
        assert record["id"] == mention["id"]
        for head in heads:  # "rebounds", never "basketball player"
            assert not re.search(rf"\b{head}\b", mention["sentence"], re.IGNORECASE), (head, mention["sentence"])
        for phrase in record["phrases"]:
            assert phrase["text"] in mention["sentence"]
            if phrase["role"] == "context":
                assert phrase["text"] in context_phrases[record["gold"]["kind"]]


def test_truth_explains_every_mention(demo):
    truth = truth_of(demo)
    mentions = mentions_of(demo)
    assert sorted(truth) == sorted(m["id"] for m in mentions)
    for m in mentions:
        record = truth[m["id"]]
        assert record["answer"] == m["answer"] and record["why"]
        qids = [c["qid"] for c in record["kb_candidates"]]
        assert (record["gold"]["qid"] in qids) == (m["answer"] != "nil")
        assert (len(qids) >= 2) == (record["category"] in ("cross_kind", "same_kind")) or record["category"] == "nil"
        assert set(record["dump_candidates_in_kb"]) == set(qids)
    readme = (demo / "README.md").read_text()
    for file in defect_files(demo):
        assert file in readme


# ------------------------------------------------------------------ the WikiData dump fixture

def test_dump_has_the_official_line_layout_and_items_to_skip(demo):
    lines = dump_lines(demo)
    assert lines[0] == "[" and lines[-1] == "]"
    assert all(line.endswith(",") for line in lines[1:-2]) and not lines[-2].endswith(",")
    entities = dump_entities(demo)
    assert {"property", "lexeme"} <= {e["type"] for e in entities}
    assert next(e for e in entities if e["type"] == "property")["id"] == "P31"
    items = {e["id"]: e for e in entities if e["type"] == "item"}
    kb = load(demo / "kb_entity.json")
    for record in kb:  # every KB entity, with the same label and description
        item = items[record["qid"]]
        assert item["labels"]["en"]["value"] == record["entity_name"]
        assert item["descriptions"]["en"]["value"] == record["desc"]
    distractors = set(items) - {record["qid"] for record in kb}
    assert len(distractors) >= 0.3 * len(kb)
    assert any("en" not in item["descriptions"] for item in items.values())
    assert any(len(item["labels"]) > 1 for item in items.values())


def test_searching_the_dump_for_a_mention_finds_candidates_by_label_or_alias(demo):
    """The search rule truth.jsonl documents: case-insensitive exact match on English labels and aliases."""
    by_name: dict[str, list[str]] = defaultdict(list)
    via = defaultdict(set)
    for item in dump_entities(demo):
        if item["type"] != "item":
            continue
        names = {item["labels"]["en"]["value"]} | {a["value"] for a in item["aliases"].get("en", [])}
        for name in {n.casefold() for n in names}:
            by_name[name].append(item["id"])
            via[name].add("alias" if name != item["labels"]["en"]["value"].casefold() else "label")
    for record in truth_of(demo).values():
        key = record["mention"].casefold()
        assert set(record["dump_candidates"]) == set(by_name[key])
        assert len(record["dump_candidates"]) > len(record["kb_candidates"]) or record["category"] == "unique_name"
    assert any(via[record["mention"].casefold()] == {"alias", "label"} for record in truth_of(demo).values())


# ------------------------------------------------------------------ completion marker and atomic writes

def test_ensure_reuses_a_complete_dataset(tmp_path, monkeypatch):
    root = ensure_demo_dataset(tmp_path / "demo", seed=0, **TINY)
    marker = load(root / ".complete")
    assert marker["generator_version"] == DEMO_GENERATOR_VERSION and is_complete(root, seed=0, defects=True, **TINY)

    def must_not_run(*args, **kwargs):
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(dataset_module, "_generate_locked", must_not_run)
    assert ensure_demo_dataset(tmp_path / "demo", seed=0, **TINY) == root


def test_ensure_regenerates_a_directory_without_marker_or_with_other_parameters(tmp_path):
    reference = file_hashes(generate_demo_dataset(tmp_path / "reference", seed=0, **TINY).out_dir)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "kb_entity.json").write_text("[\n")  # what an interrupted writer might leave
    assert file_hashes(ensure_demo_dataset(unfinished, seed=0, **TINY)) == reference

    ensure_demo_dataset(unfinished, seed=3, **TINY)
    assert file_hashes(unfinished) != reference and is_complete(unfinished, seed=3, defects=True, **TINY)


def test_an_interrupted_generation_leaves_the_old_dataset_and_no_debris(tmp_path, monkeypatch):
    root = generate_demo_dataset(tmp_path / "demo", seed=0, **TINY).out_dir
    before = file_hashes(root)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dataset_module, "write_images", crash)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_dataset(root, seed=5, **TINY)
    assert file_hashes(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "demo.tmp-lock"]


def test_refuses_to_replace_a_directory_that_is_not_a_demo_dataset(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_demo_dataset(precious, **TINY)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_cli_prints_a_summary(tmp_path, capsys):
    assert cli_main([str(tmp_path / "cli"), "--seed", "2", "--no-defects", "--entities", "20", "--mentions", "30"]) == 0
    out = capsys.readouterr().out
    assert "20 KB entities" in out and "30 mentions" in out and "defects: none" in out
    assert is_complete(tmp_path / "cli", seed=2, defects=False, **TINY)

