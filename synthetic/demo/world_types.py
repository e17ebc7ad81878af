"""The demo world's data types: KB entities, out-of-KB look-alikes, dump distractors, mentions, the world."""

from __future__ import annotations

from dataclasses import dataclass, field

from .visuals import MentionView, VisualSignature
from .vocabulary import Kind

SPLITS = ("train", "dev", "test")


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
