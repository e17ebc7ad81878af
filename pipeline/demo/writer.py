"""Turn a `World` into the MIMIC file layout, the WikiData dump fixture, and the truth files."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .visuals import differences, jpeg_bytes, kb_image, mention_image
from .vocabulary import KINDS
from .world import SPLITS, Distractor, Entity, Mention, World

DUMP_PATH = "wikidata/wikidata-demo.json.gz"
NOT_AN_IMAGE = (b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
                b"<body><h1>Not Found</h1></body></html>\n")
CATEGORIES = ("unique_name", "cross_kind", "same_kind", "nil")
PHRASE_KIND = {phrase: kind for kind in KINDS for phrase in kind.context}

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


def with_article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def plural(noun: str) -> str:
    return noun[:-1] + "ies" if noun.endswith("y") and noun[-2] not in "aeiou" else noun + "s"


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


# ------------------------------------------------------------------ truth

def image_decides(mention: Mention) -> bool:
    return bool(mention.view) and not mention.image_defect and bool(mention.gold.image_files)


def decisive_evidence(mention: Mention) -> str:
    """What separates the gold from every other KB candidate."""
    if mention.category != "same_kind":
        return {"nil": "not_in_kb", "unique_name": "name", "cross_kind": "context"}[mention.category]
    if mention.hint_detail and image_decides(mention):
        return "description_detail_or_image"
    return "description_detail" if mention.hint_detail else "image"


class TruthBuilder:
    """Per-mention explanations: who the mention is, and what evidence can tell."""

    def __init__(self, world: World, dump_index: dict[str, list[str]]):
        self.world = world
        self.dump_index = dump_index
        self.kb_qids = {e.qid for e in world.kb}
        self.seen_in_train = {m.gold.qid for m in world.mentions if m.split == "train"}

    def record(self, mention: Mention) -> dict:
        gold = mention.gold
        namesakes = self.world.kb_namesakes(gold)
        same_kind = [e for e in namesakes if e.kind is gold.kind]
        dump_candidates = self.dump_index.get(mention.name.casefold(), [])
        return {
            "id": mention.id,
            "split": mention.split,
            "mention": mention.name,
            "answer": gold.qid if gold.in_kb else "nil",
            "category": mention.category,
            "decisive_evidence": decisive_evidence(mention),
            "gold": {"qid": gold.qid, "kb_index": gold.index, "name": gold.label, "description": gold.description,
                     "kind": gold.kind.key, "in_kb": gold.in_kb},
            "kb_candidates": [{"qid": e.qid, "kb_index": e.index, "name": e.label, "kind": e.kind.key,
                               "description": e.description} for e in sorted(namesakes, key=lambda e: e.index)],
            "same_kind_kb_candidates": sorted(e.qid for e in same_kind) if gold.in_kb else [],
            "dump_candidates": dump_candidates,
            "dump_candidates_in_kb": [q for q in dump_candidates if q in self.kb_qids],
            "phrases": [{"role": role, "text": text} for role, text in mention.phrases],
            "hint": ({"detail": mention.hint_detail, "value": gold.hint_value(mention.hint_detail)}
                     if mention.hint_detail else None),
            "image": self.image_record(mention),
            "seen_in_train": gold.qid in self.seen_in_train if gold.in_kb else None,
            "why": self.why(mention, namesakes, same_kind, dump_candidates),
        }

    @staticmethod
    def image_record(mention: Mention) -> dict | None:
        if not mention.view:
            return None
        return {"file": mention.image_file, "defect": mention.image_defect,
                "signature": mention.gold.signature.as_record(), "view": asdict(mention.view)}

    def why(self, mention: Mention, namesakes: list[Entity], same_kind: list[Entity],
            dump_candidates: list[str]) -> str:
        gold, name = mention.gold, mention.name
        n = len(namesakes)
        if mention.category == "nil":
            text = (f"Refers to {gold.label} ({gold.description}, {gold.qid}), which the WikiData dump has but the KB "
                    f"lacks; {n} KB entit{'y shares' if n == 1 else 'ies share'} the name '{name}', "
                    f"so the answer is nil.")
            if any(e.kind is gold.kind for e in namesakes):
                text += f" A KB namesake is also {with_article(gold.kind.head)}, so not even the kind rules it out."
        elif mention.category == "unique_name":
            others = len(dump_candidates) - 1
            text = (f"Only one KB entity is called '{name}' ({gold.description}); the dump search returns "
                    f"{others} more same-name item{'s' if others != 1 else ''} outside the KB.")
        elif mention.category == "cross_kind":
            kinds = ", ".join(sorted(e.kind.head for e in namesakes))
            text = (f"{n} KB entities share the name '{name}' ({kinds}); "
                    f"only one is {with_article(gold.kind.head)}, so the context decides.")
        else:
            text = (f"{n} KB entities share the name '{name}'; {len(same_kind)} of them are {plural(gold.kind.head)}, "
                    f"so the context narrows it to {len(same_kind)}")
            if mention.hint_detail:
                text += (f", and the phrase '{self.hint_text(mention)}' points to the description detail "
                         f"'{gold.hint_value(mention.hint_detail)}'")
                if mention.hint_detail == "year" and gold.kind.is_person:
                    text += f" (the career of someone born {gold.details['year']})"
            if image_decides(mention):
                rivals = [e for e in same_kind if e is not gold]
                diff = "; ".join(f"{r.qid} differs in {', '.join(differences(gold.signature, r.signature))}"
                                 for r in rivals)
                text += (f"; {'the image also decides' if mention.hint_detail else 'only the image decides'}: "
                         f"the gold looks like a {gold.signature.describe()} ({diff})")
            text += "."
        contexts = [t for role, t in mention.phrases if role == "context"]
        text += f" Context relates to '{gold.description}' only loosely: {', '.join(repr(c) for c in contexts)}."
        for role, phrase in mention.phrases:
            if role == "misleading":
                text += f" {phrase!r} is misleading: it is typical of {with_article(PHRASE_KIND[phrase].head)}."
        if not mention.view:
            text += " No image: only the text decides."
        elif mention.image_defect:
            text += f" Its image is broken ({mention.image_defect.replace('_', ' ')}); the text still decides."
        if gold.in_kb and gold.qid not in self.seen_in_train:
            text += " The entity has no train mention."
        return text

    @staticmethod
    def hint_text(mention: Mention) -> str:
        return next(text for role, text in mention.phrases if role == "hint")


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


# ------------------------------------------------------------------ statistics

def statistics(world: World, dump_entries_: list[dict]) -> dict:
    mentions = world.mentions
    seen = {m.gold.qid for m in mentions if m.split == "train"}
    kb_group_sizes = Counter(sum(e.in_kb for e in members) for members in world.groups.values())
    same_kind_names = sum(1 for members in world.groups.values()
                          if max(Counter(e.kind.key for e in members if e.in_kb).values() or [0]) >= 2)
    return {
        "kb_entities": len(world.kb),
        "kb_images": sum(len(e.image_files) for e in world.kb),
        "kb_entities_without_image": sum(not e.image_files for e in world.kb),
        "mentions": len(mentions),
        "splits": {s: sum(m.split == s for m in mentions) for s in SPLITS},
        "categories": {c: sum(m.category == c for m in mentions) for c in CATEGORIES},
        "ambiguous_mentions": sum(len(world.kb_namesakes(m.gold)) >= 2 for m in mentions),
        "mentions_without_image": sum(m.view is None for m in mentions),
        "mention_images": sum(bool(m.view) and m.image_defect != "missing_file" for m in mentions),
        "nil_by_split": {s: sum(m.split == s and m.category == "nil" for m in mentions) for s in SPLITS},
        "unseen_entity_mentions": {s: sum(m.split == s and m.gold.in_kb and m.gold.qid not in seen for m in mentions)
                                   for s in ("dev", "test")},
        "unseen_entities": len({m.gold.qid for m in mentions if m.gold.in_kb and m.gold.qid not in seen}),
        "decisive_evidence": dict(sorted(Counter(decisive_evidence(m) for m in mentions).items())),
        "shared_names": sum(n for size, n in kb_group_sizes.items() if size >= 2),
        "names_by_kb_entity_count": {str(size): kb_group_sizes[size] for size in sorted(kb_group_sizes)},
        "same_kind_shared_names": same_kind_names,
        "dump_items": sum(e["type"] == "item" for e in dump_entries_),
        "dump_distractors": len(world.distractors),
        "dump_out_of_kb_referents": sum(not e.in_kb for members in world.groups.values() for e in members),
        "kinds": len({e.kind.key for e in world.kb}),
    }


# ------------------------------------------------------------------ README

def alias_example(world: World) -> str:
    for entity in world.kb:
        if entity.kind.is_person and entity.aliases:
            return f"e.g. '{entity.label}', alias '{entity.name}'"
    return "e.g. 'Marcus Jordan', alias 'Jordan'"


def same_kind_example(world: World) -> str:
    for name, members in world.groups.items():
        in_kb = [e for e in members if e.in_kb]
        for entity in in_kb:
            twins = [e for e in in_kb if e.kind is entity.kind]
            if len(twins) >= 2:
                return f"e.g. '{name}': " + " and ".join(f"{e.label} ({e.description})" for e in twins)
    return "none in this small world"


def readme_text(world: World, stats: dict, defects: list[dict], params: dict, example: dict | None) -> str:
    split_line = ", ".join(f"{stats['splits'][s]} {s}" for s in SPLITS)
    nil_line = ", ".join(f"{stats['nil_by_split'][s]} {s}" for s in SPLITS)
    categories = stats["categories"]
    evidence = "\n".join(f"| `{k}` | {v} |" for k, v in stats["decisive_evidence"].items())
    sizes = ", ".join(f"{n} name(s) with {s} KB entit{'y' if s == '1' else 'ies'}"
                      for s, n in stats["names_by_kb_entity_count"].items())
    defect_lines = "\n".join(f"- `{d['file']}` ({d['kind']}): {d['effect']}." for d in defects) \
        or "- none (generated with defects=False)"
    kinds = ", ".join(f"{k.head} ({k.instance})" for k in KINDS)
    example_block = json.dumps(example, ensure_ascii=False, indent=2) if example else "{}"
    return f"""# mmoe-mel demo dataset

Generated by `pipeline.demo` (generator version {params['version']}) with seed {params['seed']},
{params['num_entities']} KB entities, {params['num_mentions']} mentions, defects={params['defects']}.
Everything here is synthetic and deterministic: regenerate with
`python -m pipeline.demo OUT_DIR --seed {params['seed']}{'' if params['defects'] else ' --no-defects'}`.

## Layout (the MIMIC layout of WikiMEL / RichpediaMEL / WikiDiverse)

- `demo_train.json`, `demo_dev.json`, `demo_test.json`: mention records
  `id, sentence, mentions, entities, imgPath, answer` ({split_line}).
  `answer` is a KB QID or `nil`; for nil mentions `entities` names the out-of-KB referent.
- `kb_entity.json`: {stats['kb_entities']} KB records `id, qid, type, entity_name, desc, attr, instance, image_list`.
- `qid2id.json`: QID -> KB index, one line.
- `kb_image/`: {stats['kb_images']} JPEGs (1-3 per entity; {stats['kb_entities_without_image']} entities have none).
- `mention_image/`: {stats['mention_images']} JPEGs named `<mention id>.jpg`.
- `{DUMP_PATH}`: WikiData JSON dump fixture (gzip, one entity per line) with {stats['dump_items']} items:
  the KB entities, {stats['dump_out_of_kb_referents']} out-of-KB referents of nil mentions and
  {stats['dump_distractors']} same-name distractors (family names, asteroids, villages...),
  plus one property (P31) and one lexeme (L1) that readers must skip.
- `truth.jsonl`: per mention, the true entity, its same-name KB and dump candidates,
  the ambiguity category, the decisive evidence and a sentence saying why.
- `defects.json`: the deliberately broken files listed below.
- `.complete`: written last; names the generator version and a hash of the parameters.

## What makes it hard

- **Shared names.** {stats['ambiguous_mentions']} of {stats['mentions']} mentions have at least two KB
  entities of the same name ({sizes}). Persons are mostly labelled with full names ({alias_example(world)}) and
  carry the short form as an alias, other entities may carry the name as label directly;
  the mention always uses the short form. Searching the dump for the mention string
  (case-insensitive exact match on English labels and aliases of items) returns the KB namesakes
  and 0-4 distractors.
- **Same kind, same name.** In {stats['same_kind_shared_names']} names two KB entities are of the same kind
  ({same_kind_example(world)}). Their descriptions differ only in a
  detail (nationality, region, decade, genre); a sentence hints at that detail only sometimes.
  Otherwise only the image separates them.
- **Loose context.** Each of the {len(KINDS)} kinds ({kinds}) has a vocabulary of context phrases
  that never contain the description's head noun ("the rebounds" vs "basketball player",
  "the floodwaters" vs "river in Bavaria"). Sentences use 1-3 of them, sometimes with generic
  padding and, in about 15% of sentences, a misleading phrase typical of another kind (often a namesake's).
- **Visual signatures.** Every entity (and every out-of-KB referent) has a unique drawn signature:
  a shape and saturated colour on a textured pastel background, sometimes with a small corner accent.
  Texture follows the kind loosely. A same-kind namesake is a near twin: only its colour or only its
  shape differs. KB images are clean renderings; mention images are rotated (±30°), cropped (60-90%),
  rescaled, sometimes mirrored, colour-shifted and noisy.
- **Missing images.** {stats['mentions_without_image']} mentions have no image (`imgPath` is "").
  A same-kind mention without a usable image always carries a hint, so every linked mention is decidable.
- **NIL.** {categories['nil']} mentions ({nil_line}) refer to namesakes that are in the dump but not in the KB.
- **Unseen entities.** {stats['unseen_entity_mentions']['test']} test and {stats['unseen_entity_mentions']['dev']} dev
  mentions link to {stats['unseen_entities']} entities that have no train mention.

## Ambiguity categories (`category` in truth.jsonl)

| category | mentions | meaning |
|---|---|---|
| `unique_name` | {categories['unique_name']} | one KB entity has the name (the dump may still hold namesakes) |
| `cross_kind` | {categories['cross_kind']} | several KB namesakes, only the gold has its kind: context decides |
| `same_kind` | {categories['same_kind']} | a KB namesake of the same kind: a description detail or the image decides |
| `nil` | {categories['nil']} | the referent is not in the KB |

| decisive evidence | mentions |
|---|---|
{evidence}

## Deliberate defects

The pipeline's reader should keep these records as text-only and report the image problem.
They sit on mentions whose text alone decides, and on an entity with another usable image.

{defect_lines}

## truth.jsonl fields

`id`, `split`, `mention`, `answer`; `category` and `decisive_evidence` (tables above);
`gold` (qid, kb_index, name, description, kind, in_kb); `kb_candidates` (every KB entity whose label or
alias is the mention string) and `same_kind_kb_candidates`; `dump_candidates` (what the dump search
returns, in dump order) and `dump_candidates_in_kb`; `phrases` (each with its role: `context`, `hint`,
`misleading` or `generic`); `hint` (the description detail hinted at, or null); `image` (file, defect,
the gold's visual `signature` and the `view` that altered it, or null); `seen_in_train`; `why`.

## Example truth record

```json
{example_block}
```
"""
