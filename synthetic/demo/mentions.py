"""The demo world's mentions: how many per entity and in which split, the ambiguity category, and a sentence
of loose context phrases, sometimes a hint at a description detail or a misleading cue."""

from __future__ import annotations

import random

from .visuals import random_view
from .vocabulary import GENERIC_PHRASES, HINT_PHRASES, KINDS, SENTENCE_TEMPLATES
from .world_types import SPLITS, Entity, Mention

NO_IMAGE_SHARE = 0.15
UNSEEN_ENTITY_SHARE = 0.08  # entities mentioned only in dev/test
SENTENCE_WORDS = (8, 25)


def mention_counts(rng: random.Random, kb: list[Entity], linked: int) -> dict[int, int]:
    """Mentions per KB index: everyone once if possible, the rest by skewed popularity."""
    if linked < len(kb):
        return {entity.index: 1 for entity in rng.sample(kb, linked)}
    counts = {entity.index: 1 for entity in kb}
    ranks = list(range(1, len(kb) + 1))
    rng.shuffle(ranks)
    for index in rng.choices([e.index for e in kb], [1 / rank**0.7 for rank in ranks], k=linked - len(kb)):
        counts[index] += 1
    return counts


def assign_splits(rng: random.Random, kb: list[Entity], counts: dict[int, int],
                  quotas: dict[str, int]) -> list[tuple[Entity, str]]:
    """Every seen entity gets a train mention; a few 'unseen' entities appear only in dev/test."""
    mentioned = [kb[index] for index in sorted(counts)]
    dev_test_room = quotas["dev"] + quotas["test"]
    unseen = rng.sample(mentioned, min(len(mentioned), round(len(kb) * UNSEEN_ENTITY_SHARE)))
    while unseen and sum(counts[e.index] for e in unseen) > dev_test_room // 2:
        unseen.pop()
    unseen_ids = {id(e) for e in unseen}
    remaining = dict(quotas)
    placed: list[tuple[Entity, str]] = []
    for entity in unseen:
        for _ in range(counts[entity.index]):
            split = "dev" if remaining["dev"] > remaining["test"] else "test"
            remaining[split] -= 1
            placed.append((entity, split))
    pool: list[Entity] = []
    for entity in mentioned:
        if id(entity) in unseen_ids:
            continue
        extra = counts[entity.index]
        if remaining["train"] > 0:
            remaining["train"] -= 1
            placed.append((entity, "train"))
            extra -= 1
        pool += [entity] * extra
    rng.shuffle(pool)
    for entity in pool:
        split = next((s for s in SPLITS if remaining[s] > 0), "train")
        remaining[split] -= 1
        placed.append((entity, split))
    return placed


def mention_category(gold: Entity, namesakes_in_kb: list[Entity]) -> str:
    if not gold.in_kb:
        return "nil"
    if len(namesakes_in_kb) == 1:
        return "unique_name"
    same_kind = [e for e in namesakes_in_kb if e.kind is gold.kind]
    return "same_kind" if len(same_kind) > 1 else "cross_kind"


def hint_phrase(rng: random.Random, entity: Entity, detail: str) -> str:
    if detail == "flavor":
        return entity.kind.flavors[entity.details["flavor"]]
    return rng.choice(HINT_PHRASES[detail]).format(**entity.details)


def choose_hint(rng: random.Random, gold: Entity, namesakes_in_kb: list[Entity], category: str,
                has_image: bool) -> str | None:
    """Which description detail the sentence hints at, if any.

    Same-kind namesakes are separable by text only through such a hint, so one is
    forced whenever the image cannot decide (no mention image or no KB image)."""
    image_decides = has_image and bool(gold.image_files)
    if category == "same_kind":
        if image_decides and rng.random() >= 0.35:
            return None
        rivals = [e for e in namesakes_in_kb if e.kind is gold.kind and e is not gold]
        separating = [d for d in gold.kind.details if all(gold.hint_value(d) != r.hint_value(d) for r in rivals)]
        return rng.choice(separating)
    return rng.choice(gold.kind.details) if rng.random() < 0.25 else None


Phrases = list[tuple[str, str]]  # (role, text); role: context | hint | misleading | generic


def compose_phrases(rng: random.Random, gold: Entity, namesakes: list[Entity], hint: str | None) -> Phrases:
    phrases = [("context", p) for p in rng.sample(gold.kind.context, rng.choices((1, 2, 3), (35, 40, 25))[0])]
    if hint:
        phrases.append(("hint", hint_phrase(rng, gold, hint)))
    if rng.random() < 0.15:  # a cue typical of another kind, preferably a namesake's
        other_kinds = sorted({e.kind.key: e.kind for e in namesakes if e.kind is not gold.kind}.items())
        if not other_kinds:
            other_kinds = [(k.key, k) for k in KINDS if k is not gold.kind]
        misleading_kind = rng.choice(other_kinds)[1]
        phrases.append(("misleading", rng.choice(misleading_kind.context)))
    if rng.random() < 0.3 or len(phrases) < 2:
        phrases += [("generic", p) for p in rng.sample(GENERIC_PHRASES, max(1, 2 - len(phrases)))]
    while len(phrases) > 4:
        phrases.remove(expendable_phrase(phrases))
    rng.shuffle(phrases)
    return phrases


def expendable_phrase(phrases: Phrases) -> tuple[str, str]:
    """Generic padding goes first, then a misleading cue, then a surplus context phrase; never the hint."""
    for role in ("generic", "misleading"):
        for phrase in phrases:
            if phrase[0] == role:
                return phrase
    contexts = [p for p in phrases if p[0] == "context"]
    return contexts[0] if len(contexts) > 1 else next(p for p in phrases if p[0] != "hint")


def compose_sentence(rng: random.Random, name: str, phrases: Phrases) -> tuple[str, Phrases]:
    """Fill a template with the phrases; while no template keeps it within 25 words, drop a phrase."""
    while True:
        templates = list(SENTENCE_TEMPLATES[len(phrases)])
        rng.shuffle(templates)
        for template in templates:
            sentence = template.format(m=name, **{slot: text for slot, (_, text) in zip("abcd", phrases)})
            if SENTENCE_WORDS[0] <= len(sentence.split()) <= SENTENCE_WORDS[1]:
                return sentence, phrases
        if len(phrases) == min(SENTENCE_TEMPLATES):
            raise RuntimeError(f"no sentence template fits {phrases}")
        dropped = expendable_phrase(phrases)
        phrases = [p for p in phrases if p is not dropped]


def make_mention(rng: random.Random, world_groups: dict[str, list[Entity]], gold: Entity, split: str) -> Mention:
    namesakes_in_kb = [e for e in world_groups[gold.name] if e.in_kb]
    category = mention_category(gold, namesakes_in_kb)
    has_image = rng.random() >= NO_IMAGE_SHARE
    hint = choose_hint(rng, gold, namesakes_in_kb, category, has_image)
    phrases = compose_phrases(rng, gold, world_groups[gold.name], hint)
    sentence, phrases = compose_sentence(rng, gold.name, phrases)
    hinted = any(role == "hint" for role, _ in phrases)
    return Mention(split, gold.name, gold, category, phrases, sentence, hint if hinted else None,
                   random_view(rng) if has_image else None)
