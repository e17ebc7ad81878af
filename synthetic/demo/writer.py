"""Turn a `World` into the MIMIC file layout, the WikiData dump fixture and the list of broken files
(`truth` explains each mention, `readme` describes the dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .visuals import jpeg_bytes, kb_image, mention_image
from .world_types import Distractor, Entity, Mention, World

DUMP_PATH = "wikidata/wikidata-demo.json.gz"
NOT_AN_IMAGE = (b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
                b"<body><h1>Not Found</h1></body></html>\n")

PROPERTY_P31 = {
    "type": "property", "datatype": "wikibase-item", "id": "P31",
    "labels": {"en": {"language": "en", "value": "instance of"}},
    "descriptions": {"en": {"language": "en",
                            "value": "that class of which this subject is a particular example and member"}},
    "aliases": {"en": [{"language": "en", "value": "is a"}, {"language": "en", "value": "is an"}]},
    "claims": {},
}


def lexeme_l1(lemma: str) -> dict:
    # A lexeme whose lemma equals a mention string: a reader that forgets to skip non-items finds it.
    return {"type": "lexeme", "id": "L1", "lemmas": {"en": {"language": "en", "value": lemma.lower()}},
            "lexicalCategory": "Q1084", "language": "Q1860", "claims": {}, "forms": [], "senses": []}


def json_list(records: list[dict]) -> str:
    """A JSON list with one record per line: valid JSON that still diffs and greps well."""
    return "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n"


def monolingual(language: str, value: str) -> dict:
    return {"language": language, "value": value}


# ------------------------------------------------------------------ WikiData dump

def entity_item(entity: Entity) -> dict:
    labels = {"en": monolingual("en", entity.label)}
    descriptions = {"en": monolingual("en", entity.description)}
    if entity.second_language:
        language = entity.second_language
        labels[language] = monolingual(language, entity.label)
        descriptions[language] = monolingual(language, entity.kind.translations[language])
    aliases = {"en": [monolingual("en", a) for a in entity.aliases]} if entity.aliases else {}
    return {"type": "item", "id": entity.qid, "labels": labels, "descriptions": descriptions, "aliases": aliases}


def distractor_item(distractor: Distractor) -> dict:
    labels = {"en": monolingual("en", distractor.name)}
    descriptions = {}
    if distractor.description:
        descriptions["en"] = monolingual("en", distractor.description)
    if distractor.german_description:
        labels["de"] = monolingual("de", distractor.name)
        descriptions["de"] = monolingual("de", distractor.german_description)
    return {"type": "item", "id": distractor.qid, "labels": labels, "descriptions": descriptions, "aliases": {}}


def dump_entries(world: World) -> list[dict]:
    entities = [e for members in world.groups.values() for e in members]
    items = [entity_item(e) for e in entities] + [distractor_item(d) for d in world.distractors]
    items.sort(key=lambda item: int(item["id"][1:]))
    most_shared = max(world.groups, key=lambda name: (len(world.groups[name]), name))
    items.insert(len(items) // 3, PROPERTY_P31)
    items.insert(len(items) - 1, lexeme_l1(most_shared))
    return items


def dump_text(entries: list[dict]) -> str:
    """The official layout: '[' line, one entity per line ending in ',' (but the last), ']' line."""
    return "[\n" + ",\n".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in entries) + "\n]\n"


def search_dump(entries: list[dict]) -> dict[str, list[str]]:
    """Case-insensitive exact match of a string against English labels and aliases of items."""
    index: dict[str, list[str]] = {}
    for entry in entries:
        if entry["type"] != "item":
            continue
        names = {entry["labels"]["en"]["value"]} | {a["value"] for a in entry["aliases"].get("en", [])}
        for name in sorted(n.casefold() for n in names):
            index.setdefault(name, []).append(entry["id"])
    return index


# ------------------------------------------------------------------ MIMIC records

def kb_record(entity: Entity) -> dict:
    return {"id": entity.index, "qid": entity.qid, "type": "entity", "entity_name": entity.label,
            "desc": entity.description, "attr": entity.attr, "instance": entity.kind.instance,
            "image_list": list(entity.image_files)}


def mention_record(mention: Mention) -> dict:
    return {"id": mention.id, "sentence": mention.sentence, "mentions": mention.name,
            "entities": mention.gold.label, "imgPath": mention.image_file,
            "answer": mention.gold.qid if mention.gold.in_kb else "nil"}


def write_images(world: World, out: Path, seed: int) -> None:
    """Each picture draws from its own numpy stream, keyed by (seed, role, number): order-independent."""
    (out / "kb_image").mkdir()
    (out / "mention_image").mkdir()
    broken_kb_file = world.kb_image_defect[1] if world.kb_image_defect else None
    for entity in world.kb:
        for number, file in enumerate(entity.image_files):
            data = NOT_AN_IMAGE if file == broken_kb_file else \
                jpeg_bytes(kb_image(entity.signature, np.random.default_rng([seed, 1, entity.index, number])))
            (out / "kb_image" / file).write_bytes(data)
    for mention in world.mentions:
        if not mention.view or mention.image_defect == "missing_file":
            continue
        picture = mention_image(mention.gold.signature, mention.view, np.random.default_rng([seed, 2, mention.id]))
        data = jpeg_bytes(picture)
        if mention.image_defect == "truncated_jpeg":
            data = data[: len(data) // 2]  # a download cut off halfway
        (out / "mention_image" / mention.image_file).write_bytes(data)


def defect_records(world: World) -> list[dict]:
    records = [{"kind": m.image_defect, "file": f"mention_image/{m.image_file}", "mention_id": m.id,
                "effect": "truncated JPEG: the header is valid, decoding fails" if m.image_defect == "truncated_jpeg"
                else "imgPath names a file that does not exist"}
               for m in world.mentions if m.image_defect]
    if world.kb_image_defect:
        entity, file = world.kb_image_defect
        records.append({"kind": "not_an_image", "file": f"kb_image/{file}", "qid": entity.qid,
                        "effect": "an HTML error page saved under a .jpg name"})
    return records
