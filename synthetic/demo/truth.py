"""The truth files' content: per mention, who it is, its KB and dump namesakes, and what evidence tells them
apart, in a sentence (`truth.jsonl`)."""

from __future__ import annotations

from dataclasses import asdict

from .visuals import differences
from .vocabulary import KINDS
from .world_types import Entity, Mention, World

PHRASE_KIND = {phrase: kind for kind in KINDS for phrase in kind.context}


def with_article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def plural(noun: str) -> str:
    return noun[:-1] + "ies" if noun.endswith("y") and noun[-2] not in "aeiou" else noun + "s"


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
