"""The demo world's entities: which names are shared and by which kinds, details that tell namesakes apart,
visual signatures (same-kind namesakes are near twins), and same-name dump distractors."""

from __future__ import annotations

import random

from .visuals import VisualSignature, near_twin_signature, random_signature
from .vocabulary import (
    COUNTRIES,
    CREATOR_SURNAMES,
    DISTRACTOR_DESCRIPTIONS,
    GIVEN_NAMES,
    KINDS,
    REGIONS,
    SHARED_NAMES,
    Kind,
)
from .world_types import Distractor, Entity

AMBIGUOUS_ENTITY_SHARE = 0.75  # share of KB entities whose name is shared with another KB entity
GROUP_SIZES, GROUP_SIZE_WEIGHTS = (2, 3, 4, 5, 6), (35, 30, 18, 10, 7)
SAME_KIND_GROUP_SHARE = 0.4  # shared names that include two entities of the same kind
CAREER_OFFSET = 25  # a person born in 1963 is talked about in "the 1980s"
DEMONYMS = dict(COUNTRIES)


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
