"""The demo world as plain data: KB entities, out-of-KB look-alikes, dump distractors, mentions.

Nothing here touches the file system; `writer` turns a `World` into files.
All randomness comes from the one `random.Random` passed in, consumed in a
fixed order, so a seed fully determines the world.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .vocabulary import (COUNTRIES, CREATOR_SURNAMES, DISTRACTOR_DESCRIPTIONS, GENERIC_PHRASES,
                         GIVEN_NAMES, HINT_PHRASES, KINDS, REGIONS, SENTENCE_TEMPLATES, SHARED_NAMES, Kind)
from .visuals import MentionView, VisualSignature, near_twin_signature, random_signature, random_view

SPLITS = ("train", "dev", "test")
SPLIT_FRACTIONS = (4 / 6, 1 / 6, 1 / 6)
AMBIGUOUS_ENTITY_SHARE = 0.75  # share of KB entities whose name is shared with another KB entity
GROUP_SIZES, GROUP_SIZE_WEIGHTS = (2, 3, 4, 5, 6), (35, 30, 18, 10, 7)
SAME_KIND_GROUP_SHARE = 0.4  # shared names that include two entities of the same kind
NIL_SHARE = 0.02
NO_IMAGE_SHARE = 0.15
EMPTY_IMAGE_LIST_SHARE = 0.05
UNSEEN_ENTITY_SHARE = 0.08  # entities mentioned only in dev/test
CAREER_OFFSET = 25  # a person born in 1963 is talked about in "the 1980s"
SENTENCE_WORDS = (8, 25)
DEMONYMS = dict(COUNTRIES)


@dataclass
class Entity:
    """A thing with a WikiData item; in the KB unless it is the referent of a nil mention."""

    name: str  # the shared surface form that mentions use
    label: str
    aliases: list[str]
    kind: Kind
    details: dict
    description: str
    attr: str
    in_kb: bool = True
    signature: VisualSignature | None = None
    qid: str = ""
    index: int | None = None
    image_files: list[str] = field(default_factory=list)
    second_language: str | None = None

    def hint_value(self, detail: str) -> str:
        """The detail as a sentence can hint at it (a decade, not an exact year)."""
        if detail == "country":
            return self.details["demonym"]
        if detail == "year":
            return f"{self.details['decade']}s"
        return str(self.details[detail])


@dataclass
class Distractor:
    """A same-name WikiData item that is neither in the KB nor referred to by any mention."""

    name: str
    description: str | None
    german_description: str | None
    qid: str = ""


@dataclass
class Mention:
    split: str
    name: str
    gold: Entity
    category: str  # unique_name | cross_kind | same_kind | nil
    phrases: list[tuple[str, str]]  # (role, phrase), role: context | hint | misleading | generic
    sentence: str
    hint_detail: str | None
    view: MentionView | None  # None: the mention has no image
    id: int = 0
    image_defect: str | None = None  # truncated_jpeg | missing_file

    @property
    def image_file(self) -> str:
        return f"{self.id}.jpg" if self.view else ""


@dataclass
class World:
    groups: dict[str, list[Entity]]  # shared name -> entities (KB and out-of-KB), in creation order
    kb: list[Entity]  # ordered by KB index
    distractors: list[Distractor]
    mentions: list[Mention]  # ordered by id
    kb_image_defect: tuple[Entity, str] | None  # (entity, file that is not an image)

    def kb_namesakes(self, entity: Entity) -> list[Entity]:
        return [other for other in self.groups[entity.name] if other.in_kb]


# ------------------------------------------------------------------ entities

def split_quota(total: int, fractions: tuple[float, ...]) -> list[int]:
    """Largest-remainder rounding: integer parts of `total` that sum exactly to it."""
    raw = [total * f for f in fractions]
    parts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - parts[i], reverse=True)[: total - sum(parts)]:
        parts[i] += 1
    return parts


def plan_name_groups(rng: random.Random, num_entities: int) -> list[list[Kind]]:
    """Kinds of the entities behind each shared name: groups of 2–6, then unique names."""
    target = round(num_entities * AMBIGUOUS_ENTITY_SHARE)
    sizes: list[int] = []
    while sum(sizes) < target:
        sizes.append(min(rng.choices(GROUP_SIZES, GROUP_SIZE_WEIGHTS)[0], target - sum(sizes)))
    if sizes and sizes[-1] == 1:  # a lone leftover joins the previous group
        sizes.pop()
        if sizes:
            sizes[-1] += 1
    same_kind_count = max(1, round(len(sizes) * SAME_KIND_GROUP_SHARE)) if sizes else 0
    same_kind = set(rng.sample(range(len(sizes)), same_kind_count))
    groups = []
    for i, size in enumerate(sizes):
        kinds = rng.sample(KINDS, size)
        if i in same_kind:
            kinds[1] = kinds[0]  # two namesakes of the same kind: text alone cannot separate them
        groups.append(kinds)
    groups += [[rng.choice(KINDS)] for _ in range(num_entities - sum(sizes))]
    return groups


def pick_names(rng: random.Random, count: int) -> list[str]:
    pool = list(SHARED_NAMES)
    if count > len(pool):  # big worlds: add invented place-like names
        starts = ("Al", "Bren", "Cal", "Dor", "El", "Fen", "Gar", "Hal", "Is", "Kel", "Lor", "Mar",
                  "Nor", "Or", "Pen", "Ros", "Sal", "Tor", "Ul", "Vel", "Wyn")
        ends = ("ford", "ton", "wick", "ley", "mere", "dale", "by", "stead", "holm", "worth")
        pool += sorted({s + e for s in starts for e in ends} - set(pool))
    if count > len(pool):
        raise ValueError(f"at most {len(pool)} distinct names are available, {count} requested")
    return rng.sample(pool, count)


def sample_details(rng: random.Random, kind: Kind) -> dict:
    details: dict = {}
    if "region" in kind.details:
        region, adjective, country = rng.choice(REGIONS)
        details.update(region=region, region_adjective=adjective, country=country)
    else:
        details["country"] = rng.choice(COUNTRIES)[0]
    details["demonym"] = DEMONYMS[details["country"]]
    year = rng.randint(*kind.years)
    details["year"] = year
    details["end_year"] = min(year + rng.randint(38, 92), 2023)
    details["decade"] = (year + (CAREER_OFFSET if kind.is_person else 0)) // 10 * 10
    if kind.flavors:
        details["flavor"] = rng.choice(sorted(kind.flavors))
    details["creator"] = f"{rng.choice(GIVEN_NAMES)} {rng.choice(CREATOR_SURNAMES)}"
    if kind.measure:
        _, low, high = kind.measure
        details["measure"] = f"{rng.randint(low, high):,}"
    return details


def make_entity(rng: random.Random, name: str, kind: Kind, namesakes: list[Entity], in_kb: bool = True) -> Entity:
    """An entity whose description differs from all namesakes' and, against same-kind ones,
    in at least one detail a sentence can hint at."""
    same_kind = [other for other in namesakes if other.kind is kind]
    taken = {other.description for other in namesakes}
    for _ in range(200):
        details = sample_details(rng, kind)
        description = kind.description.format(**details)
        candidate = Entity(name, "", [], kind, details, description, kind.attr.format(**details), in_kb)
        if description not in taken and all(hintable_differences(candidate, other) for other in same_kind):
            break
    else:
        raise RuntimeError(f"cannot make a distinct {kind.key} called {name!r}")
    given = rng.choice(GIVEN_NAMES)
    candidate.label = rng.choice(kind.label_styles).format(name=name, given=given)
    if candidate.label != name:
        candidate.aliases.append(name)  # the dump search finds it through its alias
        if kind.is_person and rng.random() < 0.5:
            candidate.aliases.append(f"{given[0]}. {name}")
    candidate.second_language = rng.choice(("de", "fr")) if rng.random() < 0.3 else None
    return candidate


def hintable_differences(entity: Entity, other: Entity) -> list[str]:
    return [detail for detail in entity.kind.details if entity.hint_value(detail) != other.hint_value(detail)]


def assign_signatures(rng: random.Random, groups: dict[str, list[Entity]]) -> None:
    """Unique signatures; a same-kind namesake becomes a near twin of the first of its kind."""
    used: set[VisualSignature] = set()
    for entities in groups.values():
        first_of_kind: dict[str, Entity] = {}
        for entity in entities:
            twin_source = first_of_kind.get(entity.kind.key)
            for _ in range(500):
                signature = near_twin_signature(rng, twin_source.signature) if twin_source \
                    else random_signature(rng, entity.kind.textures)
                if signature not in used:
                    break
            else:
                raise RuntimeError("ran out of distinct visual signatures")
            used.add(signature)
            entity.signature = signature
            first_of_kind.setdefault(entity.kind.key, entity)


def make_distractors(rng: random.Random, name: str, kb_count: int) -> list[Distractor]:
    count = rng.randint(2, 4) if kb_count >= 2 else rng.choice((0, 0, 1, 1, 2))
    distractors = []
    for english, german in rng.sample(DISTRACTOR_DESCRIPTIONS, count):
        region, _, country = rng.choice(REGIONS)
        fields = dict(region=region, country=country, year=rng.randint(1975, 2022),
                      creator=f"{rng.choice(GIVEN_NAMES)} {rng.choice(CREATOR_SURNAMES)}")
        has_english = rng.random() >= 0.15  # some WikiData items lack an English description
        has_german = not has_english or rng.random() < 0.35
        distractors.append(Distractor(name, english.format(**fields) if has_english else None,
                                      german.format(**fields) if has_german else None))
    return distractors


# ------------------------------------------------------------------ mentions

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


# ------------------------------------------------------------------ the world

def build_world(rng: random.Random, num_entities: int, num_mentions: int, defects: bool) -> World:
    if num_entities < 2 or num_mentions < 1:
        raise ValueError("need at least 2 entities and 1 mention")
    plans = plan_name_groups(rng, num_entities)
    groups: dict[str, list[Entity]] = {}
    for name, kinds in zip(pick_names(rng, len(plans)), plans):
        groups[name] = []
        for kind in kinds:
            groups[name].append(make_entity(rng, name, kind, groups[name]))

    num_nil = round(num_mentions * NIL_SHARE) if num_mentions >= 50 else 0
    ambiguous_names = [name for name, members in groups.items() if len(members) > 1] or list(groups)
    nil_entities = []
    for _ in range(num_nil):  # out-of-KB namesakes: in the dump, not in the KB
        name = rng.choice(ambiguous_names)
        kind = rng.choice(groups[name]).kind if rng.random() < 0.5 else rng.choice(KINDS)
        entity = make_entity(rng, name, kind, groups[name], in_kb=False)
        groups[name].append(entity)
        nil_entities.append(entity)
    assign_signatures(rng, groups)

    distractors = [d for name, members in groups.items()
                   for d in make_distractors(rng, name, sum(e.in_kb for e in members))]
    kb = [e for members in groups.values() for e in members if e.in_kb]
    items: list[Entity | Distractor] = kb + nil_entities + distractors
    for item, number in zip(items, rng.sample(range(100, 125_000_000), len(items))):
        item.qid = f"Q{number}"
    rng.shuffle(kb)
    for index, entity in enumerate(kb):
        entity.index = index
    empty = {id(e) for e in rng.sample(kb, round(len(kb) * EMPTY_IMAGE_LIST_SHARE))}
    for entity in kb:
        count = 0 if id(entity) in empty else rng.choice((1, 2, 2, 3))
        entity.image_files = [f"{entity.qid}_{k}.jpg" for k in range(count)]

    totals = split_quota(num_mentions, SPLIT_FRACTIONS)
    nil_quota = split_quota(num_nil, SPLIT_FRACTIONS)
    if num_nil >= 3:  # nils in every split
        for i in (1, 2):
            if nil_quota[i] == 0:
                nil_quota[i], nil_quota[0] = 1, nil_quota[0] - 1
    linked_quota = {s: t - n for s, t, n in zip(SPLITS, totals, nil_quota)}
    placed = assign_splits(rng, kb, mention_counts(rng, kb, num_mentions - num_nil), linked_quota)
    nil_splits = [split for split, count in zip(SPLITS, nil_quota) for _ in range(count)]
    placed += list(zip(nil_entities, nil_splits))

    mentions = [make_mention(rng, groups, entity, split) for entity, split in placed]
    by_split = {s: [m for m in mentions if m.split == s] for s in SPLITS}
    mentions = []
    for split in SPLITS:
        rng.shuffle(by_split[split])
        mentions += by_split[split]
    for number, mention in enumerate(mentions, start=1):
        mention.id = number

    kb_image_defect = None
    if defects:
        kb_image_defect = plant_defects(rng, kb, mentions)
    return World(groups, kb, distractors, mentions, kb_image_defect)


def plant_defects(rng: random.Random, kb: list[Entity], mentions: list[Mention]) -> tuple[Entity, str] | None:
    """Real crawls have broken files. Put them where text still decides, so they cost no answers."""
    text_decidable = [m for m in mentions if m.view and m.category in ("unique_name", "cross_kind")]
    broken = rng.sample(text_decidable, min(2, len(text_decidable)))
    for mention, defect in zip(broken, ("truncated_jpeg", "missing_file")):
        mention.image_defect = defect
    with_spare_image = [e for e in kb if len(e.image_files) >= 2]
    if not with_spare_image:
        return None
    entity = rng.choice(with_spare_image)
    return entity, entity.image_files[0]
