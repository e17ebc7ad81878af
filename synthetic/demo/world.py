"""The demo world as plain data: KB entities, out-of-KB look-alikes, dump distractors, mentions.

Nothing here touches the file system; `writer` turns a `World` into files.
All randomness comes from the one `random.Random` passed in, consumed in a
fixed order, so a seed fully determines the world. `entities` and `mentions` make its parts,
`world_types` holds its data types.
"""

from __future__ import annotations

import random

from .entities import (
    assign_signatures,
    make_distractors,
    make_entity,
    pick_names,
    plan_name_groups,
)
from .mentions import assign_splits, make_mention, mention_counts
from .vocabulary import KINDS
from .world_types import SPLITS, Distractor, Entity, Mention, World

SPLIT_FRACTIONS = (4 / 6, 1 / 6, 1 / 6)
NIL_SHARE = 0.02
EMPTY_IMAGE_LIST_SHARE = 0.05


def split_quota(total: int, fractions: tuple[float, ...]) -> list[int]:
    """Largest-remainder rounding: integer parts of `total` that sum exactly to it."""
    raw = [total * f for f in fractions]
    parts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - parts[i], reverse=True)[: total - sum(parts)]:
        parts[i] += 1
    return parts


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
