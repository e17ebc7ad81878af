"""The items to encode, built from the lake's tables: one text and at most one image each.

- Entity ``str(kb_index)``: text ``name [SEP] description``, image = its first usable image (ingestion keeps
  only images that decoded, in the KB record's order).
- Mention ``mention_id``: text ``mention [SEP] sentence [SEP] description``, image = its own image.

The mention description comes from ``description_source``:

- ``auto``: the ``mention_descriptions`` table (the LLM stage) when it has been materialized, else ``dataset``;
- ``llm``: that table, required; a mention it has no description for is left without one;
- ``dataset``: the mention record's own ``desc`` (MIMIC releases ship one);
- ``none``: no description (the MMoE ablation "without the WikiData description").

A missing description is left out, not written as an empty part. The choice is recorded in the store's
recipe, and it changes the texts, hence the content keys of the affected mentions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from pipeline import catalog
from pipeline.errors import MELUserError
from pipeline.settings import refuse
from pipeline.hashing import hash_strings
from pipeline.lake import Lake

SEPARATOR = " [SEP] "
DESCRIPTION_SOURCES = ("auto", "llm", "dataset", "none")


@dataclass
class Items:
    """Parallel lists, one entry per item, in store row order."""

    kind: str  # "entity" | "mention"
    ids: list[str]
    texts: list[str]
    image_files: list[str | None]  # absolute paths
    image_digests: list[str | None]  # content digests recorded at ingestion
    recipe: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, positions: list[int]) -> "Items":
        """The items at ``positions``, in that order, with the same recipe."""
        return Items(self.kind, [self.ids[i] for i in positions], [self.texts[i] for i in positions],
                     [self.image_files[i] for i in positions], [self.image_digests[i] for i in positions],
                     dict(self.recipe))

    def content_keys(self, identity_json: str) -> list[str]:
        """hash(encoder identity, text, image digest): equal keys mean equal features."""
        return [hash_strings([identity_json, text, digest or ""])
                for text, digest in zip(self.texts, self.image_digests)]


def join_text(parts) -> str:
    return SEPARATOR.join(part.strip() for part in parts if part and part.strip())


def entity_items(lake: Lake) -> Items:
    table = _read(lake, catalog.ENTITIES, ["kb_index", "name", "description", "image_paths", "image_digests"])
    root = _dataset_dir(lake, catalog.ENTITIES)
    columns = table.to_pydict()
    firsts = [(paths[0], digests[0]) if paths else (None, None)
              for paths, digests in zip(columns["image_paths"], columns["image_digests"])]
    return Items(
        kind="entity",
        ids=[str(index) for index in columns["kb_index"]],
        texts=[join_text([name, description]) for name, description in zip(columns["name"], columns["description"])],
        image_files=[str(root / path) if path else None for path, _ in firsts],
        image_digests=[digest for _, digest in firsts],
        recipe={"kind": "entity", "text": "name [SEP] description", "image": "first usable image"},
    )


def mention_items(lake: Lake, description_source: str = "auto") -> Items:
    if description_source not in DESCRIPTION_SOURCES:
        refuse(Lake, f"description_source {description_source!r} is not one of {', '.join(DESCRIPTION_SOURCES)}.")
    table = _read(lake, catalog.MENTIONS, ["mention_id", "mention", "sentence", "description", "image_path", "image_digest"])
    resolved = description_source
    if resolved == "auto":
        resolved = "llm" if lake.has_table(catalog.MENTION_DESCRIPTIONS) else "dataset"
    if resolved == "llm":
        descriptions = _llm_descriptions(lake)
        chosen = [descriptions.get(mention_id) for mention_id in table.column("mention_id").to_pylist()]
    elif resolved == "dataset":
        chosen = table.column("description").to_pylist()
    else:
        chosen = [None] * table.num_rows
    items = mention_items_of(table, _dataset_dir(lake, catalog.MENTIONS), chosen)
    items.recipe.update(description_source=description_source, resolved_description_source=resolved)
    return items


def mention_items_of(table: pa.Table, image_root: Path, descriptions: list[str | None]) -> Items:
    """Mention items from rows of the mentions schema (image paths relative to `image_root`) and, per row, the
    description to append (None: none). The one place that says how a mention's text is built."""
    columns = table.to_pydict()
    texts = [join_text([mention, sentence, description])
             for mention, sentence, description in zip(columns["mention"], columns["sentence"], descriptions)]
    return Items(
        kind="mention",
        ids=columns["mention_id"],
        texts=texts,
        image_files=[str(Path(image_root) / path) if path else None for path in columns["image_path"]],
        image_digests=columns["image_digest"],
        recipe={
            "kind": "mention",
            "text": "mention [SEP] sentence [SEP] description",
            "image": "the mention's image",
            "mentions_with_description": sum(1 for d in descriptions if d and d.strip()),
        },
    )


def _llm_descriptions(lake: Lake) -> dict[str, str]:
    if not lake.has_table(catalog.MENTION_DESCRIPTIONS):
        refuse(Lake, "description_source is 'llm' but the mention_descriptions table has not been materialized; "
                     "materialize it or use 'auto'.")
    table = lake.read_table(catalog.MENTION_DESCRIPTIONS, columns=["mention_id", "description"])
    return {mention_id: description for mention_id, description in
            zip(table.column("mention_id").to_pylist(), table.column("description").to_pylist()) if description}


def _read(lake: Lake, name: str, columns: list[str]) -> pa.Table:
    if not lake.has_table(name):
        raise MELUserError(f"The {name} table has not been materialized yet (no file at {lake.table_path(name)}).")
    return lake.read_table(name, columns=columns)


def _dataset_dir(lake: Lake, table: str) -> Path:
    """The directory the table's image paths are relative to, as ingestion recorded it."""
    directory = lake.table_extra(table).get("dataset_dir")
    if not directory:
        raise MELUserError(f"The {table} table does not record its dataset directory; re-materialize it.")
    return Path(directory)
